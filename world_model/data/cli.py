"""``mg3 data generate | summary | validate`` (dispatched from ``mg3_env.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from world_model.checks import positive_arg, seed_arg, user_errors

__all__ = ["main"]


def _resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from e
    return w, h


def _explorer(text: str):
    from world_model.data.explorer import explorer_from_spec

    try:
        return explorer_from_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mg3 data", description="ViZDoom/Freedoom datasets in the LeRobot v3 layout")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate (or continue) a dataset")
    g.add_argument("--out", required=True, help="dataset folder (re-running continues it)")
    g.add_argument("--frames", type=positive_arg, required=True, help="at least this many frames (whole episodes)")
    g.add_argument("--resolution", type=_resolution, default=(160, 120), help="WxH, even sides (default 160x120)")
    g.add_argument("--workers", type=positive_arg, default=1, help="worker processes")
    g.add_argument("--seed", type=seed_arg, default=0)
    g.add_argument("--episode-frames", type=positive_arg, default=1000)
    g.add_argument(
        "--levels",
        nargs="*",
        default=None,
        help="level names (e.g. MAP01 E1M1 generated/17 retextured/17/freedoom2/MAP03); default all",
    )
    g.add_argument("--tics-per-frame", type=positive_arg, default=2, help="35/tics fps (default 2 = 17.5 fps)")
    g.add_argument("--crf", type=int, default=20)
    g.add_argument("--preset", default="veryfast")
    g.add_argument(
        "--spawn-anywhere", type=float, default=0.0, metavar="SHARE",
        help="share of the train levels' episodes that begin at a random point and heading instead of the start (0-1)",
    )  # fmt: skip
    g.add_argument(
        "--explorer", type=_explorer, default=None, metavar="SPEC",
        help='the exploring policy as changes to its defaults, e.g. "strafe=0.4,look=0" (ExplorerConfig fields)',
    )  # fmt: skip
    g.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("summary", help="print a dataset's statistics")
    s.add_argument("root")
    s.add_argument("--json", help="also write the summary as JSON here")
    s.add_argument("--plot", help="write a pose coverage PNG here")
    v = sub.add_parser("validate", help="check every file of a dataset")
    v.add_argument("root")
    v.add_argument("--no-decode", action="store_true", help="skip decoding the videos")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except user_errors() as e:
        print(f"mg3 data {args.command}: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "generate":
        from world_model.data.generate import GenerateConfig, generate_dataset

        cfg = GenerateConfig(
            frames=args.frames, width=args.resolution[0], height=args.resolution[1], workers=args.workers,
            seed=args.seed, episode_frames=args.episode_frames, levels=tuple(args.levels) if args.levels else None,
            tics_per_frame=args.tics_per_frame, crf=args.crf, preset=args.preset, spawn_anywhere=args.spawn_anywhere,
            **({"explorer": args.explorer} if args.explorer is not None else {}),
        )  # fmt: skip
        t0 = time.perf_counter()
        reader = generate_dataset(args.out, cfg, progress=not args.no_progress)
        dt = time.perf_counter() - t0
        print(f"{args.out}: {len(reader)} episodes, {reader.num_frames} frames; this run took {dt:.1f} s")
    elif args.command == "summary":
        from world_model.data.summary import format_summary, plot_pose_coverage, summarize

        summary = summarize(args.root)
        print(format_summary(summary))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=2)
        if args.plot:
            print(f"pose coverage plot: {plot_pose_coverage(args.root, args.plot)}")
    else:
        from world_model.data.format import DatasetError, validate_dataset

        try:
            reader = validate_dataset(args.root, decode=not args.no_decode)
        except DatasetError as e:
            print(f"INVALID: {e}", file=sys.stderr)
            return 1
        print(f"{args.root}: OK ({len(reader)} episodes, {reader.num_frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
