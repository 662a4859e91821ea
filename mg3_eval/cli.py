"""``mg3 eval``: evaluate a world model against the ViZDoom simulator on held-out levels.

``mg3 eval --model default --out DIR`` runs the full evaluation (the defaults of
:class:`~mg3_eval.run.EvalOptions`), writes ``DIR/metrics.json``, PNG plots and the trained
inverse-dynamics model, and prints a table of the measures next to their targets. It reports; a
missed target is not an error. See :mod:`mg3_eval`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from world_model.checks import changed_flags, positive_arg, seed_arg

__all__ = ["main"]

_EPILOG = """\
The simulator renders at the model's own resolution (128x128 for the embedded model) with the
crop of the training data. Smoke run of every part on random weights (~10 s):
  mg3 eval --model tiny-random --out /tmp/eval --episodes 1 --fidelity-chunks 2 --control-chunks 2 \\
    --idm train --idm-train-frames 300 --idm-held-out-frames 120 --idm-epochs 1 --memory-away-chunks 1 \\
    --stability-chunks 3 --stability-edge-chunks 1 --speed-chunks 1 --sharpness-chunks 1 \\
    --controllability-chunks 1
(--episodes 1 gives controllability 2 episodes: it shuffles actions across clips.)
"""


def _parser() -> argparse.ArgumentParser:
    from mg3_eval.run import PARTS, EvalOptions
    from world_model.data.doom import SPAWNS
    from world_model.data.levels import EVAL_SPLITS
    from world_model.model import MODEL_NAMES
    from world_model.runtime import CONTEXT_CACHE_CHOICES, CONTEXT_CACHE_HELP

    d = EvalOptions()
    p = argparse.ArgumentParser(
        prog="mg3 eval",
        description="Evaluate a world model against the ViZDoom simulator on held-out levels.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help=f"registry name ({', '.join(MODEL_NAMES)}) or a model folder, e.g. a training run's export/ "
        "(default: default, the embedded model)",
    )
    p.add_argument(
        "--out",
        default="mg3_eval",
        help="output folder: metrics.json, PNG plots, idm.safetensors (default: mg3_eval; a run replaces its files)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=positive_arg, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--context-cache", choices=tuple(CONTEXT_CACHE_CHOICES), default="auto", help=CONTEXT_CACHE_HELP)
    p.add_argument(
        "--context-cache-refresh",
        type=int,
        default=0,
        metavar="R",
        help="with --context-cache on: recompute the clean tokens every R-th sampler step (default 0: the first only)",
    )
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)} (default: all)"
    )
    p.add_argument(
        "--split",
        default=d.split,
        choices=EVAL_SPLITS,
        help="levels (default: test; generated: 12 generated levels no training episode plays; retextured: the train "
        "levels in looks no training episode has, episode for episode as train's)",
    )
    p.add_argument(
        "--spawn", default=d.spawn, choices=SPAWNS,
        help="where the recorded episodes of sharpness, fidelity, controllability and distillation begin: the "
        "level's start spot (default) or anywhere on it",
    )  # fmt: skip
    p.add_argument("--seed", type=seed_arg, default=d.seed, help=f"(default: {d.seed})")
    p.add_argument(
        "--action-guidance",
        type=float,
        default=None,
        metavar="S",
        help="action guidance scale of the evaluated model (SamplerConfig.action_guidance): S > 1 adds a DiT call "
        "per sampler step with null actions, v = v_null + S (v - v_null); for a model trained with action dropout "
        "(default: the model's own, 1 = off; the distillation part's teacher stays unguided)",
    )
    p.add_argument(
        "--memory-guidance",
        type=float,
        default=None,
        metavar="S",
        help="memory guidance scale of the evaluated model (SamplerConfig.memory_guidance): S > 1 adds a DiT call per "
        "sampler step of a chunk with memory, without it, v = v_free + S (v - v_free) (default: the model's own, 1 = off)",
    )
    p.add_argument(
        "--sampler-steps",
        type=int,
        default=None,
        metavar="N",
        help="sampler steps of the evaluated model (SamplerConfig.num_steps; default: the model's own): more steps, "
        "sharper frames and slower chunks",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"episodes generated together (default: {d.batch_size})"
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes of every protocol (overrides the defaults below; controllability takes at least 2)",
    )

    def count(group, flag: str, help: str, *, episodes: bool = False) -> None:
        """An int option; an episode count defaults to None so that --episodes can set it."""
        default = getattr(d, flag.removeprefix("--").replace("-", "_"))
        group.add_argument(flag, type=int, default=None if episodes else default, help=f"{help} (default: {default})")

    def rates(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.1,0.25, got {text!r}") from None

    g = p.add_argument_group("reset and sharpness")
    count(g, "--reset-episodes", "rest starts reset from (frame 0 against the input image)", episodes=True)
    count(g, "--sharpness-episodes", "episodes from the simulator's first frame with its actions", episodes=True)
    count(g, "--sharpness-chunks", "chunks per episode")
    g = p.add_argument_group("controllability (true vs shuffled actions)")
    count(g, "--controllability-episodes", "episodes (>= 2: actions are shuffled across them)", episodes=True)
    count(g, "--controllability-chunks", "chunks per episode")
    g = p.add_argument_group("motion (per-action breakdown of pan, tilt, expansion and change)")
    count(g, "--motion-episodes", "rest starts (12 first chunks each)", episodes=True)
    for kind in ("yaw", "pitch"):
        default = getattr(d, f"motion_{kind}_rates")
        g.add_argument(
            f"--motion-{kind}-rates",
            type=rates,
            default=default,
            help=f"two {kind} rates, release units per frame (default: {','.join(map(str, default))})",
        )
    g.add_argument(
        "--motion-lead-chunks",
        type=int,
        default=d.motion_lead_chunks,
        help="measure the motion in a later chunk, after this many chunks of standing still "
        f"(default: {d.motion_lead_chunks}, the first chunk)",
    )
    g = p.add_argument_group("fidelity and distillation")
    count(g, "--fidelity-episodes", "episodes from the simulator's first frame with its actions", episodes=True)
    count(g, "--fidelity-chunks", "chunks per episode (the PSNR curve)")
    count(g, "--teacher-episodes", "episodes of the student-vs-teacher comparison (chunk 0)", episodes=True)
    g.add_argument(
        "--teacher",
        default=None,
        help="the many-step teacher: a registry name, or a model folder whose base_model/ is loaded (default: the "
        "model's own: default-teacher for default, base_model/ of a model folder; where it has none, the part is "
        "skipped)",
    )
    g = p.add_argument_group("control")
    count(g, "--control-episodes", "episodes of commanded actions", episodes=True)
    count(g, "--control-chunks", "chunks per episode (one commanded keyboard and yaw class each)")
    count(
        g,
        "--idm-train-frames",
        "with --idm train: simulator frames (train levels) to train the inverse-dynamics model on",
    )
    count(g, "--idm-held-out-frames", "simulator frames (evaluated levels) to score the inverse-dynamics model on")
    count(g, "--idm-epochs", "with --idm train: training epochs of the inverse-dynamics model")
    count(
        g,
        "--idm-size",
        "longest side in pixels of the frames the inverse-dynamics model sees (128: the embedded model's)",
    )
    g.add_argument(
        "--idm",
        default=d.idm,
        help="the inverse-dynamics model that reads the video: shipped (the package's, trained on 288,000 simulator "
        "frames of the train levels), train (one trained here: --idm-train-frames, --idm-epochs), or the "
        "idm.safetensors of an earlier run (default: shipped)",
    )
    g.add_argument(
        "--idm-vae",
        action="store_true",
        help="the IDM reads simulator video passed through the model's VAE (the decoder's blur without the "
        "model's dynamics; with --idm train or a file trained so); the default reads the simulator's own frames",
    )
    g = p.add_argument_group("memory")
    count(g, "--memory-episodes", "go-and-return episodes", episodes=True)
    count(g, "--memory-away-chunks", "chunks away from the start (a full turn in place)")
    g = p.add_argument_group("stability and speed")
    count(g, "--stability-episodes", "long rollouts (rest starts, rolled out together)", episodes=True)
    count(g, "--stability-chunks", "chunks of each long rollout")
    count(
        g,
        "--stability-edge-chunks",
        "chunks averaged at its start and at its end (the end in the same phase of the explorer's plan)",
    )
    count(g, "--speed-chunks", "timed env steps")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the evaluation, print the table; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    guidance = {k: getattr(args, k) for k in ("action_guidance", "memory_guidance") if getattr(args, k) is not None}
    for k, value in guidance.items():
        if not value >= 1.0:
            parser.error(f"--{k.replace('_', '-')} must be >= 1 (1: off), got {value}")
    if args.sampler_steps is not None and args.sampler_steps < 1:
        parser.error(f"--sampler-steps must be >= 1, got {args.sampler_steps}")
    import torch

    from mg3_eval.report import format_table
    from mg3_eval.run import EvalOptions, option_part, run_evaluation
    from world_model.checkpoint import CheckpointError
    from world_model.model import load_world_model
    from world_model.runtime import CONTEXT_CACHE_CHOICES, RuntimeOptions

    d = EvalOptions()

    def episodes(specific: int | None, default: int) -> int:
        return specific if specific is not None else args.episodes if args.episodes is not None else default

    # every EvalOptions field has a flag of its name; an episode count the user
    # leaves unset takes --episodes, then the default
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions) if hasattr(args, f.name)}
    for name in values:
        if name.endswith("_episodes"):
            values[name] = episodes(values[name], getattr(d, name))
    if args.controllability_episodes is None:  # it shuffles actions across episodes: at least 2
        values["controllability_episodes"] = max(2, values["controllability_episodes"])
    values.update(parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()))
    try:
        opts = EvalOptions(**values)
    except ValueError as e:
        parser.error(str(e))
    # a flag of a part left out would do nothing
    idle = changed_flags(parser, args, [name for name in values if option_part(name) not in (None, *opts.parts)])
    if idle:
        parser.error(f"{', '.join(idle)}: options of parts that --parts {args.parts} leaves out")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        runtime = RuntimeOptions.for_device(
            args.device,
            context_cache=CONTEXT_CACHE_CHOICES[args.context_cache],
            context_cache_refresh=args.context_cache_refresh,
        )
    except ValueError as e:  # e.g. --context-cache-refresh without --context-cache
        parser.error(str(e))
    try:
        wm = load_world_model(args.model, runtime)
    except (ValueError, OSError, CheckpointError) as e:  # unknown name, missing or incomplete folder, weights absent
        print(f"mg3 eval: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 2
    if guidance:  # the generator reads the sampler config of the model it is given
        try:
            wm = wm.with_sampler(**guidance)
        except ValueError as e:  # the model guides otherwise already (e.g. the release's CFG), or two kinds at once
            flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in guidance.items())
            print(f"mg3 eval: {flags}: {e}", file=sys.stderr)
            return 2
    if args.sampler_steps is not None:
        wm = wm.with_sampler(num_steps=args.sampler_steps)
    try:
        metrics = run_evaluation(wm, args.out, opts, runtime=runtime)
    except CheckpointError as e:  # e.g. a --teacher folder without its config.json or VAE
        print(f"mg3 eval: cannot load a model the evaluation needs: {e}", file=sys.stderr)
        return 2
    print(f"model: {metrics['model']['model']} ({metrics['model']['model_config']}), out: {args.out}")
    print(format_table(metrics))
    print("reference: a perfect model with the same instrument (VAE reconstruction; IDM on the simulator's video)")
    print(f"total {metrics['seconds']['total']:.0f} s; metrics in {args.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
