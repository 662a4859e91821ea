"""How much of a model's chunk 0 on the train levels comes from recalling their looks.

A DiT trained on the 56 train levels scores higher there than on levels it never saw (session 52's teacher: +1.61 dB
pooled gain over repeat-first from their start spots, +0.87 on the test levels). Part of that is the levels' geometry
and part their looks. ``mg3 eval --split retextured`` plays the same episodes as ``--split train`` (the same commands
to the same poses: world_model.data.retexture keeps every level's geometry) in looks no training episode had; this
pairs the two runs episode by episode and reports the chunk-0 gain each gets over its own repeat-first baseline (from
each episode's pooled error) and their difference: the dB the model draws from recalling what the levels look like.

    mg3 eval --model M --device cpu --threads 2 --context-cache off --sampler-steps 16 --parts fidelity \\
        --episodes 18 --split train --out T
    mg3 eval ... --split retextured --out R
    python bench/look_recall.py T/metrics.json R/metrics.json --json bench/results/look_recall_M_cpu.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def pooled_gains(metrics: dict) -> np.ndarray:
    """Per-episode chunk-0 gain of the pooled error over repeat-first, from a metrics.json dict with a fidelity part."""
    pooled = metrics.get("fidelity", {}).get("chunk0", {}).get("pooled", {})
    if "repeat_per_episode" not in pooled:
        raise ValueError("the run has no per-episode pooled repeat-first PSNR (a fidelity run before session 54)")
    return np.asarray(pooled["per_episode"]) - np.asarray(pooled["repeat_per_episode"])


def look_recall(train: dict, retextured: dict) -> dict:
    """The paired chunk-0 gains of the same episodes on the train levels and retextured (candidate order: train)."""
    for m, split in ((train, "train"), (retextured, "retextured")):
        if m.get("options", {}).get("split") != split:
            raise ValueError(f"expected a run with --split {split}, got {m.get('options', {}).get('split')!r}")
    keys = ("seed", "spawn", "fidelity_episodes", "fidelity_chunks")
    if bad := [k for k in keys if train["options"].get(k) != retextured["options"].get(k)]:
        raise ValueError(f"the runs played other episodes ({', '.join(bad)} differ)")
    a, b = pooled_gains(train), pooled_gains(retextured)
    d = a - b
    return {
        "episodes": len(d),
        "model": train.get("model", {}).get("model"),
        "sampler_steps": train.get("model", {}).get("sampler_steps"),
        "gain_train_db": float(a.mean()),
        "gain_retextured_db": float(b.mean()),
        "recall_db": float(d.mean()),
        "recall_se_db": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
        "train_better": int((d > 0).sum()),
        "per_episode": {"train": a.tolist(), "retextured": b.tolist()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", help="metrics.json of an mg3 eval run with --split train and the fidelity part")
    p.add_argument("retextured", help="metrics.json of the same run with --split retextured")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    with open(a.train) as f, open(a.retextured) as g:
        r = look_recall(json.load(f), json.load(g))
    se = f" +- {r['recall_se_db']:.2f}" if r["recall_se_db"] is not None else ""
    print(f"{r['episodes']} episodes, chunk-0 gain of the pooled error over repeat-first")
    print(f"  train levels            {r['gain_train_db']:+.2f} dB")
    print(f"  the same, retextured    {r['gain_retextured_db']:+.2f} dB")
    print(
        f"  recalled looks          {r['recall_db']:+.2f}{se} dB ({r['train_better']} of {r['episodes']} better as trained)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
