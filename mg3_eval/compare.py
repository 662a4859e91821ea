"""Paired comparison of two ``mg3 eval`` runs: candidate minus reference, per episode.

Two models evaluated with the same options (split, seed, episode counts) see the same simulator
episodes, so their per-episode differences cancel most of what the episodes themselves contribute:
a difference of means over 6 episodes moves by more than two models differ, the mean of paired
differences over 18 does not (see the embedded model card). For every per-episode measure both runs
hold, this prints the mean difference, its standard error and how many episodes the candidate won;
for the scalar measures, both values and their difference.

    python -m mg3_eval.compare CANDIDATE/metrics.json REFERENCE/metrics.json [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mg3_eval.report import get_path

__all__ = ["PAIRED", "SCALARS", "compare", "format_comparison", "main"]

# per-episode measures: (name, dotted path of a list, its part's episode-count option, whether higher is better);
# "better" counts the episodes where the candidate's value is the better one. A path "a.b[*].c.d" takes c.d of every
# element of the list at a.b (the stability part keeps each rollout's changes in its episodes).
PAIRED = (
    ("chunk-0 PSNR dB", "fidelity.chunk0.per_episode", "fidelity_episodes", True),
    ("chunk-0 PSNR of the pooled error dB", "fidelity.chunk0.pooled.per_episode", "fidelity_episodes", True),
    (
        "ΔPSNR true vs shuffled actions dB, per clip",
        "controllability.delta_db_per_clip",
        "controllability_episodes",
        True,
    ),
    ("return view, memory on, dB", "memory.per_episode_on", "memory_episodes", True),
    ("return view, memory off (the baseline), dB", "memory.per_episode_off", "memory_episodes", True),
    ("reset frame PSNR dB", "reset.per_start", "reset_episodes", True),
    ("control keys accuracy, per episode", "control.model.per_episode.keyboard", "control_episodes", True),
    ("control mouse accuracy, per episode", "control.model.per_episode.mouse", "control_episodes", True),
    *(
        (
            f"rollout {s} change (lower is better)",
            f"stability.episodes[*].relative_change.{s}",
            "stability_episodes",
            False,
        )
        for s in ("brightness", "contrast", "sharpness")
    ),
)
# scalar measures shown side by side (no per-episode values to pair)
SCALARS = (
    ("sharpness / simulator's", "sharpness.ratio"),
    ("sharpness at half resolution", "sharpness.ratio_pooled"),
    ("grid share of generated frames (lower is better)", "sharpness.grid_share_max"),
    ("memory gain dB", "memory.gain_db"),
    ("chunk-0 gain over repeat-first dB", "fidelity.chunk0.gain_db"),
    ("chunk-0 gain, pooled error dB", "fidelity.chunk0.pooled.gain_db"),
    ("yaw slow / simulator's", "motion.actions.yaw_slow.ratio.pan"),
    ("yaw fast / simulator's", "motion.actions.yaw_fast.ratio.pan"),
    ("pitch slow / simulator's", "motion.actions.pitch_slow.ratio.tilt"),
    ("pitch fast / simulator's", "motion.actions.pitch_fast.ratio.tilt"),
    ("forward change / simulator's", "motion.actions.forward.ratio.change"),
    ("strafe pan / simulator's", "motion.actions.strafe.ratio.pan"),
    ("stability brightness change", "stability.relative_change.brightness"),
    ("stability contrast change", "stability.relative_change.contrast"),
    ("stability sharpness change", "stability.relative_change.sharpness"),
    ("control keys accuracy", "control.model.keyboard_accuracy"),
    ("control mouse accuracy", "control.model.mouse_accuracy"),
    ("control keys, feasible windows", "control.model.feasible.keyboard_accuracy"),
    ("control mouse, feasible windows", "control.model.feasible.mouse_accuracy"),
    ("control keys, as the simulator moved", "control.model.as_simulated.keyboard_accuracy"),
    ("control mouse, as the simulator turned", "control.model.as_simulated.mouse_accuracy"),
)
# options that must agree for episodes to pair (those of the parts compared are checked too)
_SHARED = ("split", "seed", "spawn")
_BEFORE = {"spawn": "start"}  # an option's value in runs made before it existed


def _mismatch(a: dict, b: dict, keys: tuple[str, ...]) -> list[str]:
    oa, ob = a.get("options", {}), b.get("options", {})
    va = {k: oa.get(k, _BEFORE.get(k)) for k in keys}
    vb = {k: ob.get(k, _BEFORE.get(k)) for k in keys}
    return [f"{k}: {va[k]!r} vs {vb[k]!r}" for k in keys if va[k] != vb[k]]


def _baseline_mismatch(a: dict, b: dict) -> str | None:
    """Where both runs scored chunk 0, the episode whose repeat-first baseline differs (the simulator showed them
    other frames: episodes begun anywhere move with the spawn rule, levels with the engine), else None."""
    ca, cb = get_path(a, "fidelity.chunk0"), get_path(b, "fidelity.chunk0")
    if not ca or not cb or "gain_per_episode" not in ca or "gain_per_episode" not in cb:
        return None
    ra = [m - g for m, g in zip(ca["per_episode"], ca["gain_per_episode"])]
    rb = [m - g for m, g in zip(cb["per_episode"], cb["gain_per_episode"])]
    for i, (x, y) in enumerate(zip(ra, rb)):
        if abs(x - y) > 1e-3:
            return f"episode {i}: repeat-first {x:.3f} vs {y:.3f} dB"
    return None


def _values(metrics: dict, path: str) -> list | None:
    """The list at ``path`` (see :data:`PAIRED`), or None where a key is missing."""
    if "[*]." not in path:
        return get_path(metrics, path)
    head, tail = path.split("[*].", 1)
    items = get_path(metrics, head)
    if not isinstance(items, list):
        return None
    values = [get_path(item, tail) for item in items]
    return None if any(v is None for v in values) else values


def _name(metrics: dict) -> Any:
    model = metrics.get("model")
    return model.get("model") if isinstance(model, dict) else model


def compare(candidate: dict, reference: dict) -> dict[str, Any]:
    """Paired and side-by-side differences of two metrics.json dicts (candidate - reference).

    Raises ValueError when the runs cannot be paired (another split, seed or spawn, or other simulator frames: the
    repeat-first baselines of chunk 0 differ); a per-episode measure
    whose episode count differs between the runs is left out with the reason."""
    if bad := _mismatch(candidate, reference, _SHARED):
        raise ValueError(f"the runs saw different episodes ({'; '.join(bad)}); evaluate both with the same options")
    if bad := _baseline_mismatch(candidate, reference):
        raise ValueError(f"the runs saw different simulator frames ({bad}); evaluate both with the same code")
    paired, skipped = {}, {}
    for name, path, count, higher_better in PAIRED:
        a, b = _values(candidate, path), _values(reference, path)
        if a is None or b is None:
            continue
        if len(a) != len(b) or _mismatch(candidate, reference, (count,)):
            skipped[name] = f"{len(a)} vs {len(b)} episodes ({count})"
            continue
        d = [x - y for x, y in zip(a, b)]
        n = len(d)
        mean = sum(d) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.nan
        paired[name] = {
            "episodes": n,
            "candidate": sum(a) / n,
            "reference": sum(b) / n,
            "mean_diff": mean,
            "stderr": se,
            "candidate_better": sum((x > 0) if higher_better else (x < 0) for x in d),
        }
    scalars = {}
    for name, path in SCALARS:
        a, b = get_path(candidate, path), get_path(reference, path)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            scalars[name] = {"candidate": a, "reference": b, "diff": a - b}
    return {
        "candidate": _name(candidate),
        "reference": _name(reference),
        "paired": paired,
        "skipped": skipped,
        "scalars": scalars,
    }


def format_comparison(c: dict[str, Any]) -> str:
    lines = [f"candidate: {c['candidate']}", f"reference: {c['reference']}", ""]
    if c["paired"]:
        lines.append(
            f"{'paired, per episode':<46}{'n':>4}{'candidate':>11}{'reference':>11}{'diff':>9}{'± se':>8}  better"
        )
        for name, p in c["paired"].items():
            lines.append(
                f"{name:<46}{p['episodes']:>4}{p['candidate']:>11.3f}{p['reference']:>11.3f}"
                f"{p['mean_diff']:>+9.3f}{p['stderr']:>8.3f}  {p['candidate_better']} of {p['episodes']}"
            )
    for name, why in c["skipped"].items():
        lines.append(f"{name:<46}not paired: {why}")
    if c["scalars"]:
        lines += ["", f"{'side by side':<46}{'':>4}{'candidate':>11}{'reference':>11}{'diff':>9}"]
        for name, s in c["scalars"].items():
            lines.append(f"{name:<46}{'':>4}{s['candidate']:>11.3f}{s['reference']:>11.3f}{s['diff']:>+9.3f}")
    if not (c["paired"] or c["scalars"]):
        lines.append("no measure in common")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mg3_eval.compare", description=__doc__.splitlines()[0])
    p.add_argument("candidate", type=Path, help="metrics.json of the candidate model")
    p.add_argument("reference", type=Path, help="metrics.json of the reference (e.g. the shipped model)")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = p.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        p.error(f"--json {args.json}: no folder {args.json.parent} to write it in")
    metrics = []
    for f in (args.candidate, args.reference):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"mg3_eval.compare: {f}: {e}", file=sys.stderr)
            return 2
        if not isinstance(data, dict) or "model" not in data:  # mg3 eval's metrics.json names its model
            print(f"mg3_eval.compare: {f} is not the metrics.json of an mg3 eval run", file=sys.stderr)
            return 2
        metrics.append(data)
    c = compare(*metrics)
    print(format_comparison(c))
    if args.json:
        args.json.write_text(json.dumps(c, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
