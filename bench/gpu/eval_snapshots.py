"""The sharpen stage's decoder snapshots on the test levels: which one to ship.

Each snapshot (``sharpen/snapshots/step-N.safetensors``, packed by ``bench/gpu/poll.sh``) goes into a copy of
``--model`` (``python -m world_model.train.export decoder``), then ``mg3 eval --parts reset,sharpness`` runs on it.
The table: generated sharpness over the simulator's (full and half resolution), the share of the detail on a
fixed pixel grid (the screen door that sharpness counts as detail; target <= 0.01), and the reset frame's PSNR
and sharpness; each run's folder holds its ``reset_frames.png`` to look at. The reference row is ``--model``
itself. JSON to ``OUT/snapshots.json``.

    python bench/gpu/eval_snapshots.py SNAPSHOT_DIR --out /tmp/snaps_eval [--model world_model/assets/embedded]
        [--every 2] [--device cpu --threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate(model: Path, out: Path, device: str, threads: int | None) -> dict:
    from mg3_eval.cli import main as eval_main

    args = ["--model", str(model), "--out", str(out), "--parts", "reset,sharpness", "--device", device]
    if threads:
        args += ["--threads", str(threads)]
    if eval_main(args) != 0:
        raise RuntimeError(f"mg3 eval failed on {model}")
    m = json.loads((out / "metrics.json").read_text())
    s, r = m["sharpness"], m["reset"]
    return {
        "sharpness": s["ratio"],
        "sharpness_half": s["ratio_pooled"],
        "grid_share": s["grid_share_max"],
        "reset_psnr": r["psnr_reset_frame"],
        "reset_sharpness": r["sharpness_reset_frame"],
        "frames": str(out / "reset_frames.png"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("snapshots", help="folder of step-N.safetensors (or a folder above sharpen/snapshots)")
    p.add_argument("--model", default="world_model/assets/embedded", help="the exported model they go into")
    p.add_argument("--out", required=True)
    p.add_argument("--every", type=int, default=1, help="evaluate every N-th snapshot (the last always)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from world_model.train.export import with_decoder

    files = sorted(Path(args.snapshots).rglob("step-*.safetensors"))
    if not files:
        print(f"eval_snapshots: no step-*.safetensors under {args.snapshots}", file=sys.stderr)
        return 2
    files = [f for i, f in enumerate(files) if i % args.every == 0 or f == files[-1]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"snapshot": "reference", **evaluate(Path(args.model), out / "reference", args.device, args.threads)}]
    for f in files:
        model = with_decoder(args.model, f, out / f.stem / "model")
        rows.append({"snapshot": f.stem, **evaluate(model, out / f.stem / "eval", args.device, args.threads)})
        (out / "snapshots.json").write_text(json.dumps(rows, indent=1))  # after each: a stopped run keeps them
    print(f"{'snapshot':20s} {'sharpness':>9s} {'half res':>8s} {'grid':>7s} {'reset dB':>8s} {'reset sharp':>11s}")
    for r in rows:
        print(
            f"{r['snapshot']:20s} {r['sharpness']:9.3f} {r['sharpness_half']:8.3f} {r['grid_share']:7.4f} "
            f"{r['reset_psnr']:8.2f} {r['reset_sharpness']:11.3f}"
        )
    print(f"wrote {out / 'snapshots.json'}; reset and still frames: */eval/reset_frames.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
