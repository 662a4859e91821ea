"""The report: the targets next to the measured values, the table ``mg3 eval`` prints, metrics as
JSON, and PNG line plots and frame strips (PIL only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mg3_env.strip import save_strip  # re-exported: the evaluation writes strips too

__all__ = ["TARGETS", "REFERENCES", "targets_table", "format_table", "json_default", "line_plot", "save_strip"]


# The targets of the evaluation: name -> (metric path, target); reported next to the values, never
# asserted. A target is ">= X ...", "<= X ...", "within A-B ...", "true", or "-" (reported, no target).
TARGETS: dict[str, tuple[str, str]] = {
    "reset_psnr": ("reset.psnr_reset_frame", ">= 27 dB against the input image"),
    "reset_sharpness": ("reset.sharpness_reset_frame", "-"),
    "sharpness": ("sharpness.ratio", ">= 0.6 of the simulator's"),
    "sharpness_pooled": ("sharpness.ratio_pooled", "-"),
    "grid": ("sharpness.grid_share_max", "<= 0.01 of the detail on a fixed grid (simulator ~1e-4)"),
    "fidelity_psnr": ("fidelity.chunk0.psnr_model", ">= 20 dB"),
    "fidelity_gain": ("fidelity.chunk0.gain_db", ">= 2 dB over repeat-first"),
    "controllability": ("controllability.delta_db", ">= 1 dB over shuffled actions"),
    "motion_yaw_slow": ("motion.actions.yaw_slow.ratio.pan", "within 0.8-1.2 of the simulator's pan"),
    "motion_yaw_fast": ("motion.actions.yaw_fast.ratio.pan", "within 0.8-1.2 of the simulator's pan"),
    "motion_pitch_slow": ("motion.actions.pitch_slow.ratio.tilt", "within 0.8-1.2 of the simulator's tilt"),
    "motion_pitch_fast": ("motion.actions.pitch_fast.ratio.tilt", "within 0.8-1.2 of the simulator's tilt"),
    "motion_forward_change": ("motion.actions.forward.ratio.change", ">= 0.6 of the simulator's change"),
    "motion_forward_expansion": ("motion.actions.forward.ratio.expansion", "-"),
    "motion_strafe_pan": ("motion.actions.strafe.ratio.pan", "-"),
    "control_keyboard": ("control.model.keyboard_accuracy", ">= 0.9"),
    "control_mouse": ("control.model.mouse_accuracy", ">= 0.9"),
    "memory_psnr": ("memory.psnr_return_memory_on", ">= 20 dB"),
    "memory_gain": ("memory.gain_db", ">= 3 dB over memory off"),
    "stability_brightness": ("stability.relative_change.brightness", "<= 0.15"),
    "stability_contrast": ("stability.relative_change.contrast", "<= 0.15"),
    "stability_sharpness": ("stability.relative_change.sharpness", "<= 0.15"),
    "stability_finite": ("stability.finite", "true"),
    "speed": ("speed.frames_per_s", ">= 16 frames/s (CPU, 2 cores)"),
    "distillation_gap": ("distillation.psnr_gap_db", "<= 1 dB below the teacher"),
}
# What a perfect model would score with the same instrument: the VAE's reconstruction for PSNR and
# sharpness, the IDM on the simulator's own video of the commanded actions for control, the
# simulator's own change along the same actions for stability.
REFERENCES: dict[str, str] = {
    "reset_psnr": "reset.psnr_vae",
    "reset_sharpness": "reset.sharpness_vae",
    "sharpness": "sharpness.ratio_vae",
    "sharpness_pooled": "sharpness.ratio_vae_pooled",
    "grid": "sharpness.grid_share_max_vae",
    "fidelity_psnr": "fidelity.chunk0.psnr_vae",
    "control_keyboard": "control.sim.keyboard_accuracy",
    "control_mouse": "control.sim.mouse_accuracy",
    "stability_brightness": "stability.simulator.relative_change.brightness",
    "stability_contrast": "stability.simulator.relative_change.contrast",
    "stability_sharpness": "stability.simulator.relative_change.sharpness",
}


def _met(value: Any, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` (a form of :data:`TARGETS`); None without a value or target."""
    if value is None or target == "-":
        return None
    if target == "true":
        return bool(value)
    op, num = target.split()[:2]
    v = float(value)
    if op == "within":
        lo, hi = (float(x) for x in num.split("-"))
        return lo <= v <= hi
    if op not in (">=", "<="):
        raise ValueError(f"unknown target form {target!r}")
    return v >= float(num) if op == ">=" else v <= float(num)


def get_path(d: dict, dotted: str) -> Any:
    """``d[a][b]...`` for ``dotted`` "a.b...", or None where a key is missing."""
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets_table(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of :data:`TARGETS` whose part is in ``metrics`` (and not skipped): its metric
    path, value, target, whether it is met, and the reference of :data:`REFERENCES`."""
    return {
        k: {
            "metric": path,
            "value": get_path(metrics, path),
            "target": target,
            "met": _met(get_path(metrics, path), target),
            "reference": get_path(metrics, REFERENCES[k]) if k in REFERENCES else None,
        }
        for k, (path, target) in TARGETS.items()
        if path.split(".")[0] in metrics and "skipped" not in metrics[path.split(".")[0]]
    }


def json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.generic,)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_plot(
    path: str | Path,
    series: dict[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    hlines: Sequence[float] = (),
    size: tuple[int, int] = (640, 400),
) -> None:
    """A PNG line chart of ``series`` (name -> y values at x = 0, 1, ...), with a legend."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 45
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [float(y) for v in series.values() for y in v if math.isfinite(float(y))] + list(hlines)
    n = max((len(v) for v in series.values()), default=1)
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(i: float, y: float) -> tuple[float, float]:
        x = left + (w - left - right) * (i / max(n - 1, 1))
        return x, top + (h - top - bottom) * (1 - (y - lo) / (hi - lo))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(6):
        y = lo + (hi - lo) * k / 5
        _, yy = px(0, y)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{y:.3g}", fill="black")
    for k in range(min(n, 11)):
        i = round(k * (n - 1) / max(min(n, 11) - 1, 1))
        xx, _ = px(i, lo)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 6, h - bottom + 6), str(i), fill="black")
    for y in hlines:
        _, yy = px(0, y)
        d.line([left, yy, w - right, yy], fill=(170, 170, 170))
    for c, (label, v) in enumerate(series.items()):
        colour = _COLOURS[c % len(_COLOURS)]
        pts = [px(i, float(y)) for i, y in enumerate(v) if math.isfinite(float(y))]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts if len(pts) <= 30 else []:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        d.line([left + 10, top + 10 + 14 * c, left + 30, top + 10 + 14 * c], fill=colour, width=2)
        d.text((left + 35, top + 4 + 14 * c), label, fill="black")
    d.text((left, 8), title, fill="black")
    d.text(((w - len(xlabel) * 6) / 2, h - 16), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    img.save(path)


def format_table(metrics: dict[str, Any]) -> str:
    """The targets as a text table: name, value, target, met, and the reference of a perfect model
    measured with the same instrument (:data:`REFERENCES`) where there is one."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [("measure", "value", "target", "met", "reference")]
    for k, t in metrics.get("targets", {}).items():
        met = "-" if t["met"] is None else "yes" if t["met"] else "no"
        rows.append((k, fmt(t["value"]), t["target"], met, fmt(t.get("reference"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
