"""Command line: ``python -m world_model.train <stage|all|status> --run DIR [options]``.

Examples::

    python -m world_model.train all --run runs/embedded --budget-minutes 240
    python -m world_model.train base --run runs/embedded          # one stage (resumes)
    python -m world_model.train status --run runs/embedded        # poll a detached run
    setsid python -m world_model.train all --run runs/e > runs/e.log 2>&1 &   # detached
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from world_model.checks import changed_flags
from world_model.train.pipeline import STAGES, PipelineOptions, run_pipeline, run_stage
from world_model.train.status import read_status, reopen


def _boolean(value: str) -> bool:
    """A flag's true/false value; anything else is an error (a typo must not read as false)."""
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {value!r}") from None
    if not 0 < minutes < float("inf"):  # a budget of 0 or less stopped every stage at once and exported that
        raise argparse.ArgumentTypeError(f"expected a finite number of minutes > 0, got {minutes}")
    return minutes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m world_model.train", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=(*STAGES, "all", "status"))
    p.add_argument("--run", required=True, type=Path, help="run folder (created if missing)")
    p.add_argument("--budget-minutes", type=_minutes, default=None, help="time budget of 'all'")
    p.add_argument("--skip", default="", help="comma-separated stages that 'all' skips")
    p.add_argument(
        "--reopen",
        default="",
        help="comma-separated finished stages that 'all' trains further (e.g. a slimmed vae: fresh optimiser)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny config, synthetic data, a few steps (CPU test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(PipelineOptions):
        if f.type in ("int", "float", "str", "bool") and f.name not in ("progress",):
            kind = {"int": int, "float": float, "str": str, "bool": _boolean}[f.type]
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, dest=f"opt_{f.name}")
    return p


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags the command would not use are an error, not a silent no-op."""
    if args.command != "all":
        given_all = changed_flags(parser, args, ("budget_minutes", "skip"))
        if given_all:
            parser.error(f"{', '.join(given_all)}: only 'all' takes them (a single stage runs to its own end)")
    if args.command == "status":
        options = [k for k in vars(args) if k.startswith("opt_")]
        extra = changed_flags(parser, args, (*options, "smoke", "reopen"))
        if extra:
            parser.error(f"status reads the run's status files and takes --run alone, got {', '.join(extra)}")
    unknown = [s for s in args.skip.split(",") if s and s not in STAGES]
    if unknown:
        parser.error(f"--skip: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run: Path = args.run
    if args.command == "status":
        if not run.is_dir():
            parser.error(f"--run {run}: no such run folder")
        try:
            statuses = {s: read_status(run / ("latents" if s == "encode" else s)) for s in STAGES}
            out = {"pipeline": read_status(run)}
        except ValueError as e:  # a damaged status.json
            parser.error(str(e))
        for stage in STAGES:
            st = statuses[stage]
            if st is not None:
                out[stage] = {
                    k: st.get(k) for k in ("state", "step", "total_steps", "eta_s", "metrics", "eval", "error")
                }
        print(json.dumps(out, indent=1, default=float))
        return 0
    if args.smoke:
        opts = PipelineOptions.smoke()
    elif (run / "pipeline.json").exists():
        opts = PipelineOptions.load(run)
    else:
        opts = PipelineOptions()
    changes = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    opts = dataclasses.replace(opts, **changes, progress=not args.no_progress and opts.progress)
    for stage in filter(None, args.reopen.split(",")):
        if stage not in STAGES:
            raise SystemExit(f"--reopen: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        folder = run / ("latents" if stage == "encode" else stage)
        if read_status(folder) is not None:
            reopen(folder)
    try:
        if args.command == "all":
            skip = tuple(s for s in args.skip.split(",") if s)
            result = run_pipeline(run, opts, budget_minutes=args.budget_minutes, skip=skip)
        else:
            result = run_stage(run, args.command, opts)
    except KeyboardInterrupt as e:  # the loop saved the last whole step first; the same command resumes from it
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    print(
        json.dumps({k: result.get(k) for k in ("stage", "state", "step", "metrics", "eval", "stages")}, default=float)
    )
    return 0 if result.get("state") in ("done", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
