"""Training checkpoints: nested state in safetensors shards of bounded size, atomic, resumable.

A checkpoint is a folder ``<run>/checkpoints/step-000001234/`` holding ``shard-00000.safetensors``,
... (each at most ``max_shard_bytes``, 16 MiB by default, so they move around easily) and
``index.json`` (the non-tensor leaves, the tensor -> shard map, and the split of tensors that are
larger than one shard). ``<run>/checkpoints/latest`` names the newest complete checkpoint; a
checkpoint folder is written under a temporary name and renamed when complete, so a run killed
mid-save resumes from the previous one.

The state is any nesting of dicts (string or int keys), lists/tuples, tensors and JSON scalars —
e.g. ``{"model": model.state_dict(), "optim": opt.state_dict(), "step": 12}``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from world_model.checkpoint import CheckpointError, read_safetensors

__all__ = [
    "MAX_SHARD_BYTES",
    "save_sharded",
    "load_sharded",
    "save_checkpoint",
    "checkpoint_step",
    "latest_checkpoint",
    "load_latest",
    "flatten_state",
    "unflatten_state",
]

MAX_SHARD_BYTES = 16 * 1024 * 1024
_SEP = "/"
_INDEX = "index.json"


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into ``{path: tensor}`` and a JSON skeleton with tensor placeholders."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj
            return {"__tensor__": path}
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f"checkpoint state keys must be str or int, got {type(k).__name__} at {path!r}")
                items.append([k, walk(v, f"{path}{_SEP}{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(obj, (list, tuple)):
            return {"__list__": [walk(v, f"{path}{_SEP}{i}" if path else str(i)) for i, v in enumerate(obj)]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path!r}; use tensors, dicts, lists, scalars")

    return tensors, walk(state, prefix)


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
    return skeleton


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_sharded(state: Any, folder: str | Path, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write ``state`` into ``folder`` as safetensors shards + ``index.json``. Returns the shard paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(state)
    # Tensors larger than a shard are split into flat pieces of at most max_shard_bytes.
    pieces: list[tuple[str, torch.Tensor]] = []
    splits: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if _nbytes(t) <= max_shard_bytes:
            pieces.append((name, t))
            continue
        per = max(1, max_shard_bytes // t.element_size())
        flat = t.reshape(-1)
        n = math.ceil(flat.numel() / per)
        splits[name] = {"shape": list(t.shape), "parts": n}
        pieces.extend((f"{name}#part{i}", flat[i * per : (i + 1) * per].clone()) for i in range(n))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in pieces:
        if size + _nbytes(t) > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += _nbytes(t)
    paths, where = [], {}
    for i, shard in enumerate(shards):
        p = folder / f"shard-{i:05d}.safetensors"
        save_file(shard, str(p))
        paths.append(p)
        where.update(dict.fromkeys(shard, p.name))
    index = {"format": "mg3-train-checkpoint/1", "state": skeleton, "tensors": where, "splits": splits}
    (folder / _INDEX).write_text(json.dumps(index))
    return paths


def load_sharded(folder: str | Path, *, device: str = "cpu") -> Any:
    """Read a folder written by :func:`save_sharded`."""
    folder = Path(folder)
    index_path = folder / _INDEX
    if not index_path.exists():
        raise CheckpointError(f"{folder} is not a training checkpoint: {_INDEX} is missing")
    index = json.loads(index_path.read_text())
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["tensors"].values())):
        loaded.update(read_safetensors(folder / shard, device=device))
    missing = sorted(set(index["tensors"]) - set(loaded))
    if missing:
        raise CheckpointError(f"{folder}: tensors listed in {_INDEX} are missing from the shards: {missing[:8]}")
    for name, info in index["splits"].items():
        parts = [loaded.pop(f"{name}#part{i}") for i in range(info["parts"])]
        loaded[name] = torch.cat(parts).reshape(info["shape"])
    return unflatten_state(index["state"], loaded)


def save_checkpoint(
    state: Any, run_dir: str | Path, step: int, *, keep: int = 2, max_shard_bytes: int = MAX_SHARD_BYTES
) -> Path:
    """Atomically write checkpoint ``step`` under ``run_dir/checkpoints`` and keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sharded(state, tmp, max_shard_bytes=max_shard_bytes)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    latest_tmp = root / f".latest-{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    latest_tmp.replace(root / "latest")
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(path: str | Path) -> int:
    """The step of a checkpoint folder ``<run>/checkpoints/step-NNNNNNNNN`` (as :func:`save_checkpoint` names it)."""
    return int(Path(path).name.removeprefix("step-"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text().strip()
        if (p / _INDEX).exists():
            return p
    done = sorted(p for p in root.glob("step-*") if (p / _INDEX).exists()) if root.is_dir() else []
    return done[-1] if done else None


def load_latest(run_dir: str | Path, *, device: str = "cpu") -> Any | None:
    """Load the newest checkpoint of a run, or None when there is none."""
    p = latest_checkpoint(run_dir)
    return None if p is None else load_sharded(p, device=device)
