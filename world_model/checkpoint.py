"""Reading checkpoint files with errors a person can act on.

Every loader in the package (DiT, VAE, text encoder) reads files through these functions and
checks the result with :func:`check_state_dict`, so a wrong folder, a missing, truncated or corrupt
file, a missing or unexpected key, or a shape mismatch all surface as one :class:`CheckpointError`
that names the file — never as a traceback from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "read_json_object",
    "read_safetensors",
    "read_torch_file",
    "check_state_dict",
    "assign_state_dict",
]

_SHOW = 8  # how many keys an error lists


class CheckpointError(RuntimeError):
    """A checkpoint folder or file is not what the loader expects."""


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        parent = path.parent
        listing = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
        hint = f"; {parent} holds {listing}" if parent.is_dir() else f"; {parent} does not exist"
        raise CheckpointError(f"missing {what}: {path}{hint}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")


def read_json_object(path: str | Path, error: type[Exception] = CheckpointError, note: str = "") -> dict:
    """A JSON file holding one object (a config, a dataset's info). Unreadable JSON or another type
    raises ``error`` naming the file, with ``note`` (what that means for the user) appended."""
    import json

    path = Path(path)
    tail = f"; {note}" if note else ""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}){tail}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}{tail}")
    return data


def read_safetensors(path: str | Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file. Truncated or corrupt files raise CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _require_file(path, "safetensors file")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = path.stat().st_size
        raise CheckpointError(
            f"cannot read {path} ({size:,} bytes): {e}. The file is truncated or corrupt; download it again."
        ) from None


def read_torch_file(path: str | Path, *, inner: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict (weights only), optionally descending into nested keys.

    ``inner=("state_dict", "gen_model")`` reads the MG-LightVAE wrapping.
    """
    path = Path(path)
    _require_file(path, "checkpoint file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        size = path.stat().st_size
        raise CheckpointError(
            f"cannot read {path} ({size:,} bytes): {type(e).__name__}: {e}. "
            "The file is truncated or corrupt; download it again."
        ) from None
    for key in inner:
        if not isinstance(obj, Mapping) or key not in obj:
            have = sorted(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: expected a {key!r} entry at {'/'.join(inner)}, found {have}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_SHOW]}")
    return dict(obj)


def _fmt(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(
    expected: Mapping[str, tuple[int, ...] | torch.Size],
    found: Mapping[str, torch.Tensor],
    source: str | Path,
) -> None:
    """Strict check of a state dict against expected names and shapes.

    Raises one CheckpointError listing the first missing keys, the first unexpected keys and every
    shape mismatch, naming ``source`` (the file).
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"checkpoint {source} does not match the model:"]
    if missing:
        parts.append(f"  {len(missing)} missing keys: {_fmt(missing)}")
    if unexpected:
        parts.append(f"  {len(unexpected)} unexpected keys: {_fmt(unexpected)}")
    if mismatched:
        parts.append(f"  {len(mismatched)} shape mismatches:")
        parts.extend(f"    {m}" for m in mismatched)
    parts.append("  Is this the right file for this model config (config.json)?")
    raise CheckpointError("\n".join(parts))


def assign_state_dict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Check ``state`` strictly against ``module`` (may live on the meta device) and assign it.

    Tensors are cast to ``dtype`` (floating point only) and moved to ``device`` first.
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state_dict(expected, state, source)
    converted = {}
    for k, v in state.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        if device is not None:
            v = v.to(device)
        converted[k] = v
    module.load_state_dict(converted, strict=True, assign=True)
    return module
