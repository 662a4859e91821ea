"""The ``mg3`` command: ``mg3 demo`` (scripted exploration -> mp4 + dataset), ``mg3 data ...``.

``mg3 demo --model tiny-random --chunks 8 --out demo_out`` runs the go-and-return explorer in a
recorded env and writes ``demo_out/demo.mp4`` plus a dataset in ``demo_out/dataset``.
``mg3 data ...`` is the data engine's command line (:mod:`world_model.data.cli`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from world_model.checks import positive_arg, seed_arg, user_errors

__all__ = ["main", "demo"]

log = logging.getLogger("mg3")


def demo(
    model: str = "default",
    chunks: int = 8,
    out: str | Path = "mg3_demo",
    *,
    device: str | None = None,
    seed: int = 0,
    image: str | None = None,
    prompt: str | None = None,
    context_cache: bool | str = "auto",
) -> dict[str, Path]:
    """Run the scripted explorer for ``chunks`` steps; returns the paths written. ``context_cache``:
    ``RuntimeOptions.context_cache`` (True, False or "auto": the device's default)."""
    import numpy as np

    from agents.explorer import Explorer
    from mg3_env.env import MatrixGameEnv
    from mg3_env.strip import save_strip
    from mg3_env.wrappers.record import RecordEpisodes
    from world_model.data.video import VideoEncoder
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wm = load_world_model(model, RuntimeOptions.for_device(device, context_cache=context_cache))
    env = RecordEpisodes(
        MatrixGameEnv(model=wm, image=image, prompt=prompt, max_chunks=chunks, render_mode="rgb_array"),
        out / "dataset",
    )
    explorer = Explorer(frames_per_chunk=env.unwrapped.vector_env.frames_per_chunk)
    s = wm.config.stream
    video_path = out / "demo.mp4"
    video = VideoEncoder(video_path, fps=s.fps, height=s.height, width=s.width)
    # the strip: the input image, the reset frame (its decoding), then the last frame of every chunk
    shown = [env.unwrapped.vector_env.default_image]
    labels = ["input image", "reset"]
    try:
        obs, info = env.reset(seed=seed)
        video.write(info["first_chunk_frames"])
        shown.append(info["first_chunk_frames"][0])
        log.info(
            "model %s (random weights: %s), chunk 0: %d frames",
            wm.name,
            wm.random_weights,
            len(info["first_chunk_frames"]),
        )
        for k in range(chunks):
            obs, _, _, truncated, info = env.step(explorer.act(obs))
            video.write(obs["frames"])
            shown.append(obs["frames"][-1])
            labels.append(f"chunk {k + 1}")
            x, y, _, pitch, yaw = np.round(obs["pose"][-1], 1)
            log.info("chunk %d: pose x=%s y=%s pitch=%s yaw=%s", k + 1, x, y, pitch, yaw)
            if truncated:
                break
    finally:
        if video.num_frames:
            video.close()
        else:  # the reset failed: no video to keep
            video.abort()
        env.close()
    strip_path = out / "strip.png"
    save_strip(strip_path, shown, labels)
    return {"video": video_path, "dataset": out / "dataset", "strip": strip_path}


def _demo_main(argv: list[str]) -> int:
    from world_model.runtime import CONTEXT_CACHE_CHOICES, CONTEXT_CACHE_HELP

    p = argparse.ArgumentParser(prog="mg3 demo", description="Scripted exploration: writes an mp4 and a dataset.")
    p.add_argument("--model", default="default", help="registry name or model folder (default: the embedded model)")
    p.add_argument("--chunks", type=positive_arg, default=8, help="chunks to generate after the first (default 8)")
    p.add_argument("--out", default="mg3_demo", help="output folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--image", default=None, help="first frame (PNG/JPEG); default: the model's own")
    p.add_argument("--prompt", default=None)
    p.add_argument("--context-cache", choices=tuple(CONTEXT_CACHE_CHOICES), default="auto", help=CONTEXT_CACHE_HELP)
    args = p.parse_args(argv)
    try:
        paths = demo(
            args.model, args.chunks, args.out, device=args.device, seed=args.seed, image=args.image,
            prompt=args.prompt, context_cache=CONTEXT_CACHE_CHOICES[args.context_cache],
        )  # fmt: skip
    except user_errors() as e:
        print(f"mg3 demo: {e}", file=sys.stderr)
        return 2
    print(f"video:   {paths['video']}")
    print(f"dataset: {paths['dataset']}")
    print(f"strip:   {paths['strip']} (the input image, the reset frame, then the last frame of every chunk)")
    return 0


def _rollouts_main(argv: list[str]) -> int:
    from mg3_env.rollouts import rollouts

    p = argparse.ArgumentParser(prog="mg3 rollouts", description="A dataset from batched world-model rollouts.")
    p.add_argument("--model", default="default", help="registry name or model folder (default: the embedded model)")
    p.add_argument("--num-envs", type=positive_arg, default=4, help="envs stepped as one batch")
    p.add_argument("--episodes", type=positive_arg, default=8, help="episodes to write")
    p.add_argument("--policy", default="random", help="random, explorer or module:callable (policy(obs) -> action)")
    p.add_argument("--max-chunks", type=positive_arg, default=8, help="chunks per episode after the first")
    p.add_argument("--out", required=True, help="dataset folder (appended to if present)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=seed_arg, default=0)
    args = p.parse_args(argv)
    try:
        r = rollouts(
            args.model, num_envs=args.num_envs, episodes=args.episodes, policy=args.policy, out=args.out,
            max_chunks=args.max_chunks, device=args.device, seed=args.seed,
        )  # fmt: skip
    except user_errors() as e:
        print(f"mg3 rollouts: {e}", file=sys.stderr)
        return 2
    print(
        f"dataset: {r['dataset']}: {r['episodes']} episodes, {r['frames']} frames in {r['seconds']:.1f} s "
        f"({r['frames_per_s']:.1f} frames/s written)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    usage = (
        "usage: mg3 {demo,rollouts,data,eval,play} ...\n  demo  scripted exploration -> mp4 + dataset\n"
        "  rollouts  a dataset from batched world-model rollouts\n  data  data engine commands\n"
        "  eval  evaluation against the simulator on held-out levels\n"
        "  play  walk through the world model in the browser (keyboard and mouse)"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return _demo_main(rest)
    if command == "rollouts":
        return _rollouts_main(rest)
    if command == "data":
        from world_model.data.cli import main as data_main

        return int(data_main(rest) or 0)
    if command == "eval":
        from mg3_eval.cli import main as eval_main

        return eval_main(rest)
    if command == "play":
        from mg3_env.play.server import main as play_main

        return play_main(rest)
    print(f"mg3: unknown command {command!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
