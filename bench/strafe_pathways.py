"""Which input moves the picture while the model strafes: the strafe key, or the camera code the env integrates
from it? A diagnostic of issue 13's mouse control (the model's strafes read as turns).

From the start spot of each level (or, with ``--spawn anywhere --starts K``, from K random points and headings of each)
it plays one chunk of each condition and measures the horizontal pan of the frames
(pixels per frame, the shift that best aligns consecutive frames' grey images, averaged over the chunk):

- the simulator strafing left (ViZDoom, the same start);
- the model with the strafe key and the camera code integrated from it (what the env does);
- the strafe key with the camera code of standing still (the keys' translation taken out of the integrated poses);
- no key with the camera code of a left strafe;
- a left turn at 2 degrees a frame (its pan does not depend on the depth: ~2.8 pixels at 90 degrees over 128).

    python bench/strafe_pathways.py --model default --split test --levels 6 --json bench/results/strafe_pathways_test_cpu.json

The summary also gives the correlation, over the starts, of the model's pan (key and camera code as integrated) with
the simulator's: a model that draws the parallax follows the depth of each place, one that slides by a fixed amount
does not.

With ``--frames DIR`` (a raw-frame recording, ``python -m world_model.train.engine_frames --out DIR ...``) it measures
the same pan over the recording's train frames of a strafe without W/S or rotation instead: what the DiT is taught.

Every start's chunks draw the same noise (the env reset with the start's index as its seed), so the conditions pair
and a second run repeats the first (session 40: unseeded, two runs of 6 start spots gave 3.6 and 6.0 for one model).

The camera code is changed by wrapping ``world_model.generator.integrate_poses`` for the chunk (the env's own
integration is the only place the keys become poses).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator

import numpy as np

CONDITIONS = {
    # name: (strafe key held, yaw mouse units per frame, camera code: "keys" | "still" | "strafe")
    "model, strafe key, camera as integrated": (True, 0.0, "keys"),
    "model, strafe key, camera standing still": (True, 0.0, "still"),
    "model, no key, camera of a strafe": (False, 0.0, "strafe"),
    "model, turn left 2 deg/frame": (False, -2.0 / 15.0, "keys"),
}


def horizontal_pan(frames: np.ndarray, radius: int = 16, rows: slice = slice(None)) -> float:
    """Mean |shift| in pixels between consecutive frames [T, H, W, 3] (of the given rows), by least squares over
    the overlap."""
    grey = frames[:, rows].astype(np.float32).mean(-1)
    w = grey.shape[2]

    def shift(a: np.ndarray, b: np.ndarray) -> int:
        def err(s: int) -> float:
            return float(np.mean((a[:, max(0, -s) : w - max(0, s)] - b[:, max(0, s) : w - max(0, -s)]) ** 2))

        return min(range(-radius, radius + 1), key=err)

    return float(np.mean([abs(shift(grey[i], grey[i + 1])) for i in range(len(grey) - 1)]))


def band_pans(frames: np.ndarray, bands: int = 3) -> list[float]:
    """The pan of each horizontal band of rows, top to bottom. A turn shifts every row alike (Doom's view turns about
    the vertical axis), a sideways step shifts the near floor and ceiling (the top and bottom bands) more than the
    far walls in the middle: the parallax an inverse-dynamics model can tell a strafe from a turn by."""
    h = frames.shape[1]
    edges = np.linspace(0, h, bands + 1).round().astype(int)
    return [horizontal_pan(frames, rows=slice(int(a), int(b))) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def parallax(bands: list[float]) -> float:
    """(top + bottom) / 2 - middle of three band pans, in pixels a frame: ~0 for a turn, > 0 for a step aside."""
    return (bands[0] + bands[-1]) / 2 - bands[len(bands) // 2]


@contextlib.contextmanager
def camera_code(mode: str) -> Iterator[None]:
    """The env's pose integration for the duration: from the keys ("keys"), without the keys' translation
    ("still"), or as if A were held ("strafe"); the mouse is integrated as given in every mode."""
    import world_model.generator as generator
    from world_model.camera import integrate_poses

    def integrate(keyboard, mouse, start, cfg):
        if mode != "keys":
            keyboard = keyboard.clone()
            keyboard[..., :4] = 0
            if mode == "strafe":
                keyboard[..., 2] = 1
        return integrate_poses(keyboard, mouse, start, cfg)

    generator.integrate_poses = integrate
    try:
        yield
    finally:
        generator.integrate_poses = integrate_poses


def recorded_strafe_pan(folder: str, samples: int = 600) -> dict[str, float]:
    """The pan of ``samples`` random frame pairs of a strafe (the action class "strafe": A or D without W/S or a
    rotation) in a recording's train split, and the share of them in which the camera moved (more than 3 map units;
    the rest: against a wall)."""
    from pathlib import Path

    from world_model.data.summary import action_masks
    from world_model.train.engine_frames import load_shards
    from world_model.train.frames import FrameStore

    store = FrameStore.concat(load_shards(Path(folder) / "train"))
    last = np.zeros(len(store.keyboard), bool)
    last[store.starts[1:] - 1] = True  # an episode's last frame has no next frame
    pure = action_masks(store.mouse, store.keyboard)["strafe"] & ~last
    idx = np.random.default_rng(0).permutation(np.nonzero(pure)[0])[:samples]
    pans = np.array([horizontal_pan(store.frames[i : i + 2]) for i in idx])
    moved = np.linalg.norm(store.poses[idx + 1, :2] - store.poses[idx, :2], axis=1) > 3
    return {
        "pairs": int(len(idx)),
        "strafe_share": float(pure.mean()),
        "pan": float(pans.mean()),
        "moving_share": float(moved.mean()),
        "pan_moving": float(pans[moved].mean()),
    }


def main(argv: list[str] | None = None) -> None:
    from mg3_env.env import MatrixGameEnv
    from world_model.data.doom import Command, DoomConfig, DoomEngine, describe_look
    from world_model.data.levels import levels_in_split

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--levels", type=int, default=6, help="levels, spread over the split's list")
    p.add_argument("--spawn", default="start", choices=("start", "anywhere"), help="where each chunk begins")
    p.add_argument("--starts", type=int, default=1, help="starts per level (seeds of the spawn point with 'anywhere')")
    p.add_argument("--frames", default=None, help="a raw-frame recording: measure its strafes instead")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.starts < 1 or (a.starts > 1 and a.spawn == "start"):
        p.error("--starts takes 1 or more, and more than 1 only with --spawn anywhere (the start spot is one place)")
    if a.frames:
        result = recorded_strafe_pan(a.frames)
        print(json.dumps(result))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"frames": a.frames, **result}, f, indent=1)
        return
    env = MatrixGameEnv(model=a.model)
    v = env.vector_env
    size = (v.single_observation_space["frames"].shape[2], v.single_observation_space["frames"].shape[1])
    levels = levels_in_split(a.split)
    levels = levels[:: max(1, len(levels) // a.levels)][: a.levels]
    rows: dict[str, dict[str, float]] = {}
    band_rows: dict[str, dict[str, list[float]]] = {}
    for level, seed in ((lv, s) for lv in levels for s in range(a.starts)):
        with DoomEngine(level, DoomConfig(*size, spawn=a.spawn), seed=seed, workdir=tempfile.mkdtemp()) as engine:
            image, _ = engine.reset()
            sim = [image] + [engine.step(Command(left=True))[0] for _ in range(v.frames_per_chunk)]
        row = {"simulator, strafe left": horizontal_pan(np.stack(sim))}
        band_row = {"simulator, strafe left": band_pans(np.stack(sim))}
        for name, (strafe, yaw, mode) in CONDITIONS.items():
            # the same noise for every condition of a start, and for every run: the conditions pair, runs repeat
            env.reset(seed=len(rows), options={"image": image, "prompt": level.prompt(describe_look(image))})
            keyboard = np.zeros((v.frames_per_chunk, v.keyboard_dim), np.float32)
            keyboard[:, 2] = float(strafe)
            mouse = np.zeros((v.frames_per_chunk, 2), np.float32)
            mouse[:, 1] = yaw
            with camera_code(mode):
                obs, *_ = env.step({"keyboard": keyboard, "mouse": mouse})
            row[name] = horizontal_pan(obs["frames"])
            band_row[name] = band_pans(obs["frames"])
        key = level.name if a.spawn == "start" else f"{level.name}#{seed}"
        rows[key] = row
        band_rows[key] = band_row
        print(key, {k: round(x, 2) for k, x in row.items()}, flush=True)
    env.close()
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values()))}
    bands = {k: np.mean([r[k] for r in band_rows.values()], axis=0).tolist() for k in mean}
    sim_pan = [r["simulator, strafe left"] for r in rows.values()]
    model_pan = [r["model, strafe key, camera as integrated"] for r in rows.values()]
    corr = float(np.corrcoef(sim_pan, model_pan)[0, 1]) if len(rows) > 2 and np.std(sim_pan) > 0 else float("nan")
    where = "start spots" if a.spawn == "start" else "random points"
    print(f"\nmean |pan| px/frame over {len(rows)} {a.split}-level {where}, one chunk each")
    for k, x in mean.items():
        print(f"  {k:45s} {x:6.2f}")
    print(f"  correlation of the model's strafe pan with the simulator's over the starts: {corr:.2f}")
    print("\nthe pan of the top / middle / bottom third of the rows, and the parallax (top + bottom) / 2 - middle")
    for k, b in bands.items():
        print(f"  {k:45s} {' / '.join(f'{x:.2f}' for x in b):20s} {parallax(b):+6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            out = {"model": a.model, "split": a.split, "spawn": a.spawn, "starts_per_level": a.starts}
            bands_out = {"bands_mean": bands, "parallax_mean": {k: parallax(b) for k, b in bands.items()}}
            per = {"per_level": rows, "bands_per_level": band_rows}
            json.dump({**out, "mean": mean, "correlation_with_simulator": corr, **bands_out, **per}, f, indent=1)


if __name__ == "__main__":
    main()
