"""Distillation: the fidelity of chunk 0 for the few-step model and its many-step teacher, with the
time per chunk of each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mg3_eval.protocols.fidelity import fidelity
from mg3_eval.simulator import SimEpisode
from world_model.model import WorldModel

__all__ = ["teacher_for", "distillation"]


def teacher_for(wm: WorldModel, runtime, teacher: str | None = None) -> WorldModel | None:
    """The many-step teacher: ``teacher`` (a registry name, or a folder whose ``base_model/`` is
    loaded) when given, else the model's own (``base_model/`` of its folder), or None."""
    from world_model.model import BASE_VARIANTS, EMBEDDED_DIR, load_world_model

    if teacher is not None:
        folder = Path(teacher).expanduser().is_dir()
        return load_world_model(teacher, runtime, variant="base" if folder else "distilled")
    if wm.name == "default" and not (EMBEDDED_DIR / "base_model").is_dir():
        return None
    if wm.name in BASE_VARIANTS:
        return load_world_model(wm.name, runtime, variant="base")
    path = Path(wm.name).expanduser()
    if path.is_dir() and (path / "base_model").is_dir():
        return load_world_model(path, runtime, variant="base")
    return None


def distillation(
    wm: WorldModel, teacher: WorldModel, episodes: Sequence[SimEpisode], *, seed: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """Chunk 0's fidelity (:func:`~mg3_eval.protocols.fidelity.fidelity`) of the few-step model
    ``wm`` and of its many-step ``teacher`` on the same episodes: PSNR of each, the gap and the
    ratio of their times per first chunk."""
    s = fidelity(wm, episodes, num_chunks=1, seed=seed, batch_size=batch_size)
    t = fidelity(teacher, episodes, num_chunks=1, seed=seed, batch_size=batch_size)
    return {
        "episodes": len(episodes),
        "student": {
            "steps": wm.config.sampler.num_steps,
            "psnr": s["chunk0"]["psnr_model"],
            "seconds_first_chunk": s["seconds_first_chunk"],
        },
        "teacher": {
            "steps": teacher.config.sampler.num_steps,
            "psnr": t["chunk0"]["psnr_model"],
            "seconds_first_chunk": t["seconds_first_chunk"],
        },
        "psnr_gap_db": t["chunk0"]["psnr_model"] - s["chunk0"]["psnr_model"],
        "time_ratio": s["seconds_first_chunk"] / t["seconds_first_chunk"],
    }
