"""Checkpoint folders of the release layout (spec §2.1): find them, load the DiT, write our own.

A release folder (local, or the hub repo ``Skywork/Matrix-Game-3.0``)::

    <root>/
      model_index.json
      base_distilled_model/{config.json, diffusion_pytorch_model.safetensors}   # 3-step model
      base_model/{config.json, diffusion_pytorch_model.safetensors}             # 50-step + CFG
      Wan2.2_VAE.pth, MG-LightVAE.pth, MG-LightVAE_v2.pth                         # VAEs
      models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/                          # text encoder

The two-expert model (mg3-28b-moe, not released) is assumed to use Wan2.2-A14B's layout, one DiT
folder per expert: ``<root>/high_noise_model/`` and ``<root>/low_noise_model/`` (see
:func:`load_moe_dit`).

The DiT weights may also be sharded (``diffusion_pytorch_model.safetensors.index.json`` with its
shards). Every problem is reported as one :class:`~world_model.checkpoint.CheckpointError` that
names the file and says what was expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import CheckpointError, assign_state_dict, check_state_dict, read_json_object
from .config import ConfigError, DiTConfig

if TYPE_CHECKING:
    from .dit import MatrixGameDiT
    from .moe import MoEDiT

__all__ = [
    "RELEASE_REPO_ID",
    "DIT_SUBFOLDERS",
    "MOE_SUBFOLDERS",
    "DIT_WEIGHTS",
    "DIT_INDEX",
    "resolve_checkpoint",
    "dit_folder",
    "read_dit_config",
    "load_dit",
    "load_dit_folder",
    "is_moe_folder",
    "load_moe_dit",
    "write_dit_folder",
    "INT8_SCALE_SUFFIX",
    "quantize_rows_int8",
    "stores_int8",
]

RELEASE_REPO_ID = "Skywork/Matrix-Game-3.0"
DIT_SUBFOLDERS = {"distilled": "base_distilled_model", "base": "base_model"}
MOE_SUBFOLDERS = {"high_noise": "high_noise_model", "low_noise": "low_noise_model"}  # assumed (Wan2.2-A14B)
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIT_INDEX = DIT_WEIGHTS + ".index.json"
CONFIG_NAME = "config.json"
# int8 storage (write_dit_folder(int8=True)): a weight W [rows, ...] is stored as int8 Q with a float16 scale
# per row under "<key>.int8_scale", W ~ Q * scale; the loaders dequantize it, so the model sees float weights
INT8_SCALE_SUFFIX = ".int8_scale"
INT8_MIN_NUMEL = 4096  # smaller tensors (norms, biases, embeddings of a few rows) stay in float

_RELEASE_LAYOUT = (
    "the release layout is <root>/base_distilled_model/ and <root>/base_model/, each with config.json and "
    f"{DIT_WEIGHTS} (or {DIT_INDEX} plus its shards), next to models_t5_umt5-xxl-enc-bf16.pth, "
    "google/umt5-xxl/ and the VAE .pth files"
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "it is empty"
    more = f" (+{len(names) - 20} more)" if len(names) > 20 else ""
    return "it holds " + ", ".join(names[:20]) + more


def resolve_checkpoint(
    path_or_repo_id: str | Path,
    *,
    allow_patterns: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
) -> Path:
    """A checkpoint root folder: an existing local folder, or a hub snapshot.

    A string like ``"Skywork/Matrix-Game-3.0"`` that is not a local folder is fetched with
    ``huggingface_hub.snapshot_download`` (only ``allow_patterns`` if given; ``cache_dir`` and
    ``revision`` as there; offline mode through the hub's own ``HF_HUB_OFFLINE``).
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise CheckpointError(f"expected a checkpoint folder, got the file {path}; {_RELEASE_LAYOUT}")
    text = str(path_or_repo_id)
    if not _REPO_ID.match(text):
        raise CheckpointError(
            f"expected an existing local folder or a hub id like {RELEASE_REPO_ID!r}, got {text!r} (no such folder)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"{text!r} is no local folder; to fetch it from the hub: pip install huggingface_hub") from e
    try:
        local = snapshot_download(
            repo_id=text,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=None if allow_patterns is None else list(allow_patterns),
        )
    except Exception as e:  # the hub raises many types (offline, not found, auth, network)
        raise CheckpointError(
            f"{text!r} is no local folder, and fetching it from the Hugging Face hub failed: "
            f"{type(e).__name__}: {e}. Pass a local folder, or check the id and network (HF_HUB_OFFLINE)."
        ) from None
    return Path(local)


def dit_folder(root: str | Path, variant: str = "distilled") -> Path:
    """``<root>/base_distilled_model`` or ``<root>/base_model``; a clear error for a wrong root."""
    if variant not in DIT_SUBFOLDERS:
        raise ValueError(f"variant must be one of {sorted(DIT_SUBFOLDERS)}, got {variant!r}")
    root = Path(root)
    folder = root / DIT_SUBFOLDERS[variant]
    if folder.is_dir():
        return folder
    hint = ""
    if (root / CONFIG_NAME).exists() or (root / DIT_WEIGHTS).exists():
        hint = f" {root} looks like a DiT subfolder itself; pass its parent folder (the checkpoint root)."
    raise CheckpointError(
        f"{root} is not a release checkpoint folder: missing {DIT_SUBFOLDERS[variant]}/ "
        f"({_listing(root)}); {_RELEASE_LAYOUT}.{hint}"
    )


def read_dit_config(folder: str | Path) -> DiTConfig:
    """Read ``<folder>/config.json`` (release keys) into a :class:`DiTConfig`."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"missing {path} ({_listing(path.parent)}); {_RELEASE_LAYOUT}")
    data = read_json_object(path)
    try:
        return DiTConfig.from_release(data)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid DiT config: {e}") from None


def _shapes_single(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read {path} ({path.stat().st_size:,} bytes): {e}. The file is truncated or corrupt; "
            "download it again."
        ) from None


def _weight_files(folder: Path) -> dict[Path, dict[str, tuple[int, ...]]]:
    """Weight files of a DiT folder with their key -> shape headers (no tensor data read)."""
    single, index = folder / DIT_WEIGHTS, folder / DIT_INDEX
    if single.is_file():
        return {single: _shapes_single(single)}
    if not index.is_file():
        raise CheckpointError(f"missing {single} (or a sharded {DIT_INDEX}) in {folder} ({_listing(folder)})")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from None
    out = {}
    for name in shards:
        shard = folder / name
        if not shard.is_file():
            raise CheckpointError(f"missing shard {shard}, listed in {index} ({_listing(folder)})")
        out[shard] = _shapes_single(shard)
        listed = {k for k, v in weight_map.items() if v == name}
        if listed != set(out[shard]):
            diff = sorted(listed ^ set(out[shard]))[:8]
            raise CheckpointError(f"shard {shard} does not hold the keys {index} lists for it (differ: {diff})")
    return out


def quantize_rows_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [rows, ...] as int8 with one float16 scale per row (symmetric, round to nearest): ``(q, scale)``
    with ``q.float() * scale[:, None, ...] ~ t`` to half a step (the row's largest magnitude / 254, at least 2^-15)."""
    rows = t.detach().float().reshape(t.shape[0], -1)
    amax = rows.abs().amax(dim=1)
    # float16 as stored; at least its smallest normal number (2^-14), which also covers all-zero rows
    scale = (amax / 127).clamp(min=2.0**-14).half()
    q = (rows / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def _dequantize(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Replace every int8 weight of ``state`` that has a ``.int8_scale`` beside it by its float32 value."""
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE_SUFFIX)}
    for k in [k for k in state if k.endswith(INT8_SCALE_SUFFIX)]:
        key, scale = k[: -len(INT8_SCALE_SUFFIX)], state[k]
        q = out.get(key)
        if q is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise CheckpointError(
                f"{source}: {k} scales no int8 weight [{scale.shape[0]}, ...] (found "
                f"{None if q is None else (q.dtype, tuple(q.shape))})"
            )
        out[key] = q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))
    unscaled = [k for k, v in out.items() if v.dtype == torch.int8]
    if unscaled:
        raise CheckpointError(f"{source}: int8 weights without their {INT8_SCALE_SUFFIX}: {unscaled[:8]}")
    return out


def _strip_prefix(keys: Sequence[str], prefix: str = "model.") -> dict[str, str]:
    """file key -> model key, dropping ``prefix`` only when every key carries it."""
    if keys and all(k.startswith(prefix) for k in keys):
        return {k: k[len(prefix) :] for k in keys}
    return {k: k for k in keys}


def load_dit(
    root: str | Path,
    variant: str = "distilled",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MatrixGameDiT:
    """Load the release DiT (``variant`` "distilled" or "base") from a folder or hub id.

    The model is built on the meta device from ``config.json``; every key and shape is checked
    before any tensor data is read, then the weights are read one tensor at a time, cast to
    ``dtype`` and assigned on ``device``.
    """
    if variant not in DIT_SUBFOLDERS:
        raise ValueError(f"variant must be one of {sorted(DIT_SUBFOLDERS)}, got {variant!r}")
    folder = dit_folder(resolve_checkpoint(root, allow_patterns=[f"{DIT_SUBFOLDERS[variant]}/*"]), variant)
    return load_dit_folder(folder, device=device, dtype=dtype)


def stores_int8(folder: str | Path) -> bool:
    """Whether a DiT folder stores its weights in int8 with a scale per row (:func:`write_dit_folder` with
    ``int8=True``, as the embedded default ships): read from the safetensors headers, no tensor data."""
    return any(k.endswith(INT8_SCALE_SUFFIX) for keys in _weight_files(Path(folder)).values() for k in keys)


def load_dit_folder(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MatrixGameDiT:
    """Load one DiT folder (``config.json`` + safetensors, single file or sharded); see :func:`load_dit`."""
    from safetensors import safe_open

    from .dit import MatrixGameDiT

    folder = Path(folder)
    cfg = read_dit_config(folder)
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}

    files = _weight_files(folder)
    source = next(iter(files)) if len(files) == 1 else folder / DIT_INDEX
    all_keys = [k for shapes in files.values() for k in shapes]
    rename = _strip_prefix(all_keys)
    found = {
        rename[k]: torch.empty(s, device="meta")
        for shapes in files.values()
        for k, s in shapes.items()
        if not k.endswith(INT8_SCALE_SUFFIX)
    }
    check_state_dict(expected, found, source)

    state = {}
    for path, shapes in files.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in shapes:
                    t = f.get_tensor(k)
                    state[rename[k]] = t.to(dtype) if t.is_floating_point() and not k.endswith(INT8_SCALE_SUFFIX) else t
        except Exception as e:  # data region damaged after a valid header
            raise CheckpointError(f"cannot read tensor data of {path}: {type(e).__name__}: {e}") from None
    state = _dequantize(state, source)
    assign_state_dict(model, state, source, dtype=dtype, device=device)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"MatrixGameDiT kept tensors on the meta device after loading: {left[:8]}")
    return model.eval()


def is_moe_folder(root: str | Path) -> bool:
    """A local folder with one DiT subfolder per expert (``high_noise_model/``, ``low_noise_model/``)."""
    root = Path(root)
    return all((root / sub).is_dir() for sub in MOE_SUBFOLDERS.values())


def load_moe_dit(
    root: str | Path,
    boundary_timestep: float,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MoEDiT:
    """Load a two-expert DiT from ``<root>/high_noise_model/`` and ``<root>/low_noise_model/``.

    Each expert folder is a DiT folder as :func:`load_dit_folder` reads it (its own ``config.json``).
    ``boundary_timestep``: the high-noise expert runs at timesteps >= this (e.g. 900); it is not
    part of the weights (Wan2.2 keeps it in code, not in the checkpoint).
    """
    from .moe import MoEDiT

    root = resolve_checkpoint(root, allow_patterns=[f"{sub}/*" for sub in MOE_SUBFOLDERS.values()])
    missing = [sub for sub in MOE_SUBFOLDERS.values() if not (root / sub).is_dir()]
    if missing:
        raise CheckpointError(
            f"{root} is not a two-expert checkpoint folder: missing {', '.join(m + '/' for m in missing)} "
            f"({_listing(root)}); the layout is <root>/{MOE_SUBFOLDERS['high_noise']}/ and "
            f"<root>/{MOE_SUBFOLDERS['low_noise']}/, each with config.json and {DIT_WEIGHTS}"
        )
    high = load_dit_folder(root / MOE_SUBFOLDERS["high_noise"], device=device, dtype=dtype)
    low = load_dit_folder(root / MOE_SUBFOLDERS["low_noise"], device=device, dtype=dtype)
    return MoEDiT(high, low, boundary_timestep).eval()


def write_dit_folder(
    model: torch.nn.Module, folder: str | Path, *, max_shard_bytes: int | None = None, int8: bool = False
) -> Path:
    """Save a DiT in the release layout: ``config.json`` (release keys) + safetensors.

    ``model`` needs a ``cfg`` (:class:`DiTConfig`). With ``max_shard_bytes``, weights larger than
    that go into numbered shards plus ``diffusion_pytorch_model.safetensors.index.json``.
    ``int8``: every floating weight of >= 2 dims and >= 4,096 values stored as int8 with a float16 scale
    per row (:func:`quantize_rows_int8`; half the bytes of bf16, each weight within half a step of its
    row's largest magnitude / 127); the loaders dequantize it. Returns the folder.
    """
    from safetensors.torch import save_file

    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, DiTConfig):
        raise TypeError(f"model must carry its DiTConfig as .cfg, got {type(cfg).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "WanModel", "is_action_model": cfg.action_config is not None, **cfg.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if int8:
        for k in [k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2 and v.numel() >= INT8_MIN_NUMEL]:
            state[k], state[k + INT8_SCALE_SUFFIX] = quantize_rows_int8(state[k])
    for stale in [folder / DIT_WEIGHTS, folder / DIT_INDEX, *folder.glob("diffusion_pytorch_model-*.safetensors")]:
        stale.unlink(missing_ok=True)
    total = sum(v.numel() * v.element_size() for v in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(state, str(folder / DIT_WEIGHTS), metadata={"format": "pt"})
        return folder

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        if k.endswith(INT8_SCALE_SUFFIX):  # goes with its weight (below), into the same shard
            continue
        group = {k: v}
        if k + INT8_SCALE_SUFFIX in state:
            group[k + INT8_SCALE_SUFFIX] = state[k + INT8_SCALE_SUFFIX]
        nbytes = sum(t.numel() * t.element_size() for t in group.values())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1].update(group)
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / DIT_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return folder
