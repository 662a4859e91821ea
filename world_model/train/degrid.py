"""Take a decoder's fixed screen door out of its output bias.

A Wan2.2-style decoder ends in a convolution to ``3 * p * p`` channels that :func:`~world_model.vae.unpatchify`
lays out as ``p x p`` pixel blocks, so an offset of one of those channels is a pattern repeated on the
``p``-pixel grid over every frame: the "screen door" of ``mg3 eval``'s grid share (session 27: a GAN-trained
decoder draws one on generated latents, 0.03 of the detail against the simulator's 1e-5). Where the pattern is
additive it is exactly a bias: measured as the mean, over frames and over the grid's blocks, of each pixel
minus its block's mean (the world's own detail averages out; the block mean holds each phase once, so the
pattern comes out whole, not high-passed), and subtracted from the bias of the channel that draws that phase.
Nothing else of the model changes.

The frames it is measured on are the model's own, rolled out through the vector env from starts on the
*training* levels (the test levels stay unseen): walking and turning, so that walls, floors and skies all count.

    python -m world_model.train.degrid --model MODEL --out DIR [--starts 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["block_pattern", "fold_pattern", "degrid"]

_HEAD_BIAS = "decoder.head.2.bias"


def block_pattern(frames: np.ndarray, period: int) -> np.ndarray:
    """The pattern [3, period, period] (uint8 units) that uint8 ``frames`` [..., H, W, 3] repeat on the fixed
    ``period``-pixel grid: each pixel minus its block's mean, averaged over all blocks and frames."""
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [..., H, W, 3], got shape {frames.shape}")
    h, w = frames.shape[-3] // period * period, frames.shape[-2] // period * period
    if h == 0 or w == 0:
        raise ValueError(f"frames of {frames.shape[-3]}x{frames.shape[-2]} hold no {period}x{period} block")
    x = frames[..., :h, :w, :].reshape(-1, h // period, period, w // period, period, 3).astype(np.float64)
    x = x - x.mean(axis=(2, 4), keepdims=True)
    return x.mean(axis=(0, 1, 3)).transpose(2, 0, 1)  # [period(dy), period(dx), 3] -> [3, dy, dx]


def fold_pattern(bias: torch.Tensor, pattern: np.ndarray) -> torch.Tensor:
    """The decoder head's bias [3 p^2] with ``pattern`` [3, p, p] (uint8 units) taken out: channel
    ``c * p * p + dx * p + dy`` draws pixel (dy, dx) of colour c (:func:`~world_model.vae.patchify`'s order);
    the output's [-1, 1] is 127.5 uint8 units. Same dtype as ``bias``."""
    c, p, q = pattern.shape
    if c != 3 or p != q or bias.shape != (3 * p * p,):
        raise ValueError(f"a pattern [3, p, p] needs a bias [3 p^2]; got {pattern.shape} and {tuple(bias.shape)}")
    per_channel = torch.from_numpy(np.ascontiguousarray(pattern.transpose(0, 2, 1))).reshape(-1)  # (c, dx, dy)
    return (bias.double() - per_channel / 127.5).to(bias.dtype)


def _rollout_frames(model, starts: int, seed: int, threads: int) -> np.ndarray:
    """The model's frames from ``starts`` training-level starts, walking and turning (uint8 [N, H, W, 3])."""
    from mg3_eval.protocols.memory import go_and_return
    from mg3_eval.simulator import rest_starts
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    torch.set_num_threads(threads)
    wm = load_world_model(model, RuntimeOptions.for_device("cpu"))
    chosen = rest_starts(wm.config, starts, split="train", seed=seed)
    r = go_and_return(wm, chosen, [seed + i for i in range(len(chosen))], away_chunks=4, walk_chunks=1)
    return r.frames[:, r.start.stop :].reshape(-1, *r.frames.shape[-3:])  # the generated chunks, not the reset


def _share(frames: np.ndarray, period: int) -> float:
    from mg3_eval.metrics import grid_share

    return grid_share(frames, period)


def degrid(model: str | Path, out: str | Path, *, starts: int = 8, seed: int = 0, threads: int = 2) -> dict:
    """Write ``model`` with its decoder's screen door taken out to the new folder ``out``; returns what was
    measured (the pattern, the grid share of the calibration frames before and after)."""
    model, out = Path(model), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: give a new folder")
    weights = load_file(str(model / "vae.safetensors"))
    if _HEAD_BIAS not in weights:
        raise KeyError(f"{model / 'vae.safetensors'} has no {_HEAD_BIAS}")
    period = json.loads((model / "config.json").read_text())["vae"]["patch_size"]
    if period < 2:
        raise ValueError(f"patch_size {period}: the decoder draws no pixel grid")
    before = _rollout_frames(str(model), starts, seed, threads)
    pattern = block_pattern(before, period)
    weights[_HEAD_BIAS] = fold_pattern(weights[_HEAD_BIAS], pattern)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    save_file(weights, str(tmp / "vae.safetensors"), metadata={"format": "pt"})
    after = _rollout_frames(str(tmp), starts, seed, threads)
    report = {
        "model": str(model),
        "period": period,
        "calibration": {"split": "train", "starts": starts, "seed": seed, "frames": int(len(before))},
        "pattern_uint8": np.round(pattern, 3).tolist(),
        "grid_share_before": _share(before, period),
        "grid_share_after": _share(after, period),
        "pattern_after_uint8_max": float(np.abs(block_pattern(after, period)).max()),
    }
    (tmp / "degrid.json").write_text(json.dumps(report, indent=1))
    tmp.rename(out)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported model folder (config.json, vae.safetensors, ...)")
    p.add_argument("--out", required=True, help="a new folder for the model with its screen door taken out")
    p.add_argument("--starts", type=int, default=8, help="training-level starts the pattern is measured on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(degrid(args.model, args.out, starts=args.starts, seed=args.seed, threads=args.threads), indent=1))


if __name__ == "__main__":
    main()
