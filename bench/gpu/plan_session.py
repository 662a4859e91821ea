"""Pipeline flags for one GPU session from the throughput bench measured at its start.

Prints ``--flag value`` pairs: the budget shares, the batch sizes, whether to compile the DiT
(only where the bench's compiled row ran and was >= 15 % faster than the eager one), and the GAN
start steps of the VAE and decoder stages (at 45 % and 30 % of the steps their budget share buys
at the measured rate, so that the discriminator comes in once reconstruction has converged).

    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES
"""

from __future__ import annotations

import json
import sys

SHARES = {"data": 0.0, "vae": 0.27, "decoder": 0.10, "encode": 0.05, "base": 0.30, "memory": 0.15, "dmd": 0.12,
          "export": 0.01}  # fmt: skip


def rate(rows: list[dict], **match) -> float | None:
    for r in rows:
        if "error" not in r and all(r.get(k) == v for k, v in match.items()):
            return float(r["steps_per_s"])
    return None


def main() -> None:
    bench, budget = json.load(open(sys.argv[1])), float(sys.argv[2])
    rows = bench["rows"]
    total = sum(SHARES.values())
    seconds = {k: 60 * budget * v / total for k, v in SHARES.items()}
    vae = rate(rows, stage="vae", gan=False) or 5.0
    dec = rate(rows, stage="decoder") or 5.0
    eager = rate(rows, stage="base", batch=128, compile=False)
    compiled = rate(rows, stage="base", batch=128, compile=True)
    mem_eager = rate(rows, stage="memory", batch=128, compile=False)
    mem_compiled = rate(rows, stage="memory", batch=128, compile=True)
    use_compile = bool(
        eager and compiled and compiled > 1.15 * eager and mem_eager and mem_compiled and mem_compiled > mem_eager
    )
    flags = {
        "shares": ",".join(f"{k}={v}" for k, v in SHARES.items()),
        "vae-batch": 32,
        "vae-gan-start": int(0.45 * vae * seconds["vae"]),
        "decoder-gan-start": int(0.30 * dec * seconds["decoder"]),
        "base-batch": 128,
        "base-lr": 4e-4,
        "memory-batch": 128,
        "memory-lr": 2e-4,
        "compile": str(use_compile).lower(),
    }
    print(" ".join(f"--{k} {v}" for k, v in flags.items()))


if __name__ == "__main__":
    main()
