"""Export the many-step teacher (the memory model's EMA) next to the shipped few-step student.

The distillation comparison ("the 3-step model within 1 dB of its many-step teacher") needs the
teacher's weights after the training machine is gone, so it is saved in the release layout as the many-step
``<run>/export/base_model/`` beside the 3-step ``base_distilled_model/`` (bf16, like the student).

    python -m world_model.train.teacher --run runs/embedded
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["export_teacher"]


def export_teacher(run: str | Path, *, stage: str = "memory") -> Path:
    """Write the ``stage`` EMA DiT to ``<run>/export/base_model`` (bf16, release layout); returns the folder."""
    from world_model.train.pipeline import PipelineOptions, _dit_from, run_config
    from world_model.weights import write_dit_folder

    run = Path(run)
    opts = PipelineOptions.load(run)
    cfg = run_config(run, opts)
    dit = _dit_from(run, stage, cfg, torch.device("cpu")).to(torch.bfloat16)
    return write_dit_folder(dit, run / "export" / "base_model", max_shard_bytes=15 * 2**20)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--stage", default="memory")
    args = p.parse_args(argv)
    print(export_teacher(args.run, stage=args.stage))


if __name__ == "__main__":
    main()
