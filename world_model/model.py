"""A world model bundle (config + DiT + VAE + text encoder) and the registry of loadable models.

``load_world_model(name_or_path, runtime)`` accepts:

- ``"tiny-random"``: the :func:`~world_model.config.tiny` config (64x64 frames) with random
  weights drawn from a fixed seed. For tests and smoke runs; it shows noise, not a world.
- ``"mg3-5b"`` / ``"mg3-5b-base"``: the released Matrix-Game 3.0 5B model (3-step distilled, or the
  50-step base with guidance), from the Hugging Face hub (``Skywork/Matrix-Game-3.0``). Needs a GPU.
- ``"mg3-5b-random"``: the 5B architecture at 704x1280 with random weights and a random text
  encoder of the right shape, for speed measurements only.
- ``"mg3-28b-moe"``: the 2 x 14B two-expert model (:func:`~world_model.config.mg3_28b_moe`), whose
  checkpoint is not released: the name says so and asks for a local folder with
  ``high_noise_model/`` and ``low_noise_model/``; ``"mg3-28b-moe-random"`` builds it with random
  weights (37.7 B parameters, 75 GB in bf16) for speed measurements.
- a path to a local folder in the release layout (``base_distilled_model/``, VAE and T5 files).
- ``"default"``: our trained embedded model, shipped inside the package
  (``world_model/assets/embedded/``); runs on a CPU.
- a path to a folder exported by our training pipeline (``config.json`` + ``vae.safetensors`` +
  ``base_distilled_model/``; optionally the many-step teacher in ``base_model/``), or two experts in
  ``high_noise_model/`` and ``low_noise_model/`` (``world_model.train.export.combine_experts``).

``variant="base"`` loads the many-step base model of a folder (release: 50 steps with guidance;
ours: the memory model before distillation) instead of the few-step distilled one; of a registry name, the
name's many-step twin (``"mg3-5b"`` -> ``"mg3-5b-base"``, ``"default"`` -> ``"default-teacher"``), and a name without
one raises. ``seed`` draws the weights of the ``*-random`` models; elsewhere a seed other than 0 raises.

Every loader applies the runtime options (attention backend, self-attention projection precision,
8-bit linears, sequence parallelism, compilation) to the DiT once it is built, through
:func:`~world_model.runtime.apply_runtime` (see :class:`~world_model.runtime.RuntimeOptions`); ``quantize="auto"``
(the CPU default) is resolved first from how the DiT's weights are stored (int8 for the embedded default).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from world_model.checks import whole
from world_model.config import WorldModelConfig, mg3_5b, mg3_28b_moe, tiny
from world_model.runtime import (
    RuntimeOptions,
    apply_process_runtime,
    apply_runtime,
    apply_vae_runtime,
    check_runtime,
    compile_blocks,
)

if TYPE_CHECKING:
    from world_model.config import TextConfig
    from world_model.text import TextEncoder

__all__ = [
    "WorldModel",
    "default_dtype",
    "load_world_model",
    "random_world_model",
    "is_exported_folder",
    "load_exported_dit",
    "MODEL_NAMES",
    "RELEASE_HUB_ID",
    "EMBEDDED_DIR",
]

RELEASE_HUB_ID = "Skywork/Matrix-Game-3.0"


@dataclass
class WorldModel:
    """Everything the streaming generator needs, built and on its device.

    ``name``: the registry name or path it was loaded from; ``random_weights``: True when the
    weights are random (no pretrained world in them); ``source``: where the weights came from.
    """

    config: WorldModelConfig
    dit: nn.Module
    vae: nn.Module
    text_encoder: object
    runtime: RuntimeOptions
    name: str
    random_weights: bool
    source: str
    default_image: str | None = None  # a first frame that suits the model (path), else the package's
    default_prompt: str | None = None  # a prompt that suits the model, else the package's
    _prompt_cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        apply_vae_runtime(self.vae, self.runtime)  # every constructor and copy (replicate, with_sampler) alike
        apply_process_runtime(self.runtime)

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """[B, text_len, dim] prompt embeddings on the model's device (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                emb = self.text_encoder.encode(missing)
            for p, e in zip(missing, emb):
                self._prompt_cache[p] = e.to(self.runtime.device, self.runtime.dtype)
            while len(self._prompt_cache) > 256:  # bounded: drop the oldest
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def replicate(self, device: str | torch.device) -> WorldModel:
        """This model with its DiT and VAE weights copied to ``device`` (one copy per call, made from
        the weights' current device, never via the CPU). The text encoder is shared, not copied:
        prompt embeddings are moved to the replica's device by :meth:`encode_prompts`."""
        device = torch.device(device)
        if self.runtime.sequence_parallel > 1:
            raise ValueError(
                "a sequence-parallel model spans the ranks of a process group and is not replicated; "
                "load one per device with sequence_parallel=1 instead"
            )
        if self.runtime.quantize == "int8" and device.type != "cpu":
            raise ValueError(
                f"this model runs int8 GEMMs, offered on the CPU only: it is not replicated to {device}; load it "
                "there instead (the device's default quantize, or quantize=None)"
            )
        # a copy runs eagerly until compiled again, on its own weights (a deep copy drops a module's compiled call;
        # the VAE's: __post_init__)
        dit = _copy_module(self.dit, device)
        if self.runtime.compile:
            compile_blocks(dit, cuda_graphs=self.runtime.cuda_graphs)
        return replace(
            self,
            dit=dit,
            vae=_copy_module(self.vae, device),
            runtime=replace(self.runtime, device=str(device)),
            _prompt_cache={},
        )

    def with_sampler(self, **changes: object) -> WorldModel:
        """This model (the same weights, not copied) sampling with ``changes`` to its sampler config
        (e.g. ``num_steps=3``, ``action_guidance=2``); a bad value raises the config's error.

        ``context_cache_refresh=r`` (an int) records the context cache the model is measured with (written when it
        is saved, read by ``RuntimeOptions(context_cache="auto")`` at a later load) and, where this model runs the
        context cache, makes it refresh every r-th step from now on (``runtime.context_cache_refresh``)."""
        config = self.config.replace(sampler=self.config.sampler.replace(**changes))
        runtime = self.runtime
        refresh = changes.get("context_cache_refresh")
        if refresh is not None and runtime.context_cache is True:
            runtime = replace(runtime, context_cache_refresh=refresh)
        return replace(self, config=config, runtime=runtime)

    def describe(self) -> dict[str, object]:
        """Facts for ``info`` and dataset metadata."""
        s = self.config.stream
        return {
            "model": self.name,
            "model_config": self.config.name,
            "random_weights": self.random_weights,
            "weights_source": self.source,
            "resolution": (s.height, s.width),
        }


@torch.no_grad()
def _copy_module(module: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are copied straight to ``device``."""
    memo: dict[int, object] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        moved = t.detach().to(device, copy=True)
        memo[id(t)] = nn.Parameter(moved, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else moved
    return copy.deepcopy(module, memo).to(device)


@torch.no_grad()
def _randomize_zero_layers(module: nn.Module, std: float) -> None:
    """Draw the weights that training init leaves at zero (output head, camera scale/shift), so
    that in a random model the frames depend on every input (actions, camera, memory)."""
    for p in module.parameters():
        if p.ndim >= 2 and not p.any():
            p.normal_(0.0, std)


def _apply_runtime(dit: nn.Module, runtime: RuntimeOptions) -> nn.Module:
    """Runtime choices applied to a built DiT (one or two experts), once: see :func:`apply_runtime`."""
    return apply_runtime(dit, runtime)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside get their floating-point parameters in ``dtype`` (torch's default dtype, restored after)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _random_moe(config: WorldModelConfig, runtime: RuntimeOptions, big: bool) -> nn.Module:
    """Both experts with training init: on the CPU when small; when big, made on the meta device and
    materialised on the runtime device in the runtime dtype (two 14B experts never exist in fp32)."""
    from world_model.moe import MoEDiT

    if not big:
        return MoEDiT.from_config(config)
    with torch.device("meta"):
        dit = MoEDiT.from_config(config)
    dit = dit.to(runtime.dtype).to_empty(device=runtime.device)
    dit.high_noise.init_weights()
    dit.low_noise.init_weights()
    return dit


def _build_random(config: WorldModelConfig, runtime: RuntimeOptions, name: str, seed: int) -> WorldModel:
    """Random weights from ``seed``: small models are drawn on the CPU (same weights on every machine)
    and moved; big ones are drawn on the device in the runtime dtype."""
    from world_model.dit import MatrixGameDiT
    from world_model.vae import WanVAE

    runtime = runtime.resolve_quantize(False).resolve_context_cache(config.sampler.context_cache_refresh)  # float
    big = config.dit.dim >= 1024
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.moe is not None:
            dit = _random_moe(config, runtime, big)
            with torch.device(runtime.device if big else "cpu"):
                vae = WanVAE(config.vae).to(runtime.dtype if big else torch.float32)
        elif big:  # built on the device in the runtime dtype: the 5B DiT made in fp32 first held 18.6 GiB (a 24.1
            # GiB build peak on an H100, session 51) and is slow on a CPU
            with torch.device(runtime.device), default_dtype(runtime.dtype):
                dit = MatrixGameDiT(config.dit)
                vae = WanVAE(config.vae)
        else:
            dit = MatrixGameDiT(config.dit)
            vae = WanVAE(config.vae)
        _randomize_zero_layers(dit, std=0.02)
    dit = _apply_runtime(dit.to(runtime.device, runtime.dtype).eval(), runtime)
    vae = vae.to(runtime.device, runtime.dtype).eval()
    text = _text_encoder(config.text, None, runtime, random_seed=seed)
    return WorldModel(config, dit, vae, text, runtime, name, True, f"random init (seed {seed})")


def _text_encoder(
    cfg: TextConfig, root: str | Path | None, runtime: RuntimeOptions, *, random_seed: int | None = None
) -> TextEncoder:
    """The text encoder of ``cfg`` (a seeded random one with ``random_seed``, whatever ``cfg.kind``) on
    ``runtime.text_device`` (default: the model's device), or kept in host memory and moved there per
    encoding with ``runtime.text_offload``."""
    from world_model.text import OffloadedTextEncoder, RandomTextEncoder, make_text_encoder

    device = runtime.text_device or runtime.device
    where = "cpu" if runtime.text_offload else device
    if random_seed is not None:
        encoder: TextEncoder = RandomTextEncoder(cfg, seed=random_seed, device=where, dtype=runtime.dtype)
    else:
        encoder = make_text_encoder(cfg, root, device=where, dtype=runtime.dtype)
    return OffloadedTextEncoder(encoder, device) if runtime.text_offload else encoder


def random_world_model(config: WorldModelConfig, runtime: RuntimeOptions | None = None, *, seed: int = 0) -> WorldModel:
    """A model of any config with random weights (name ``"<config.name>"``, flagged as random)."""
    runtime = runtime or RuntimeOptions.for_device()
    check_runtime(runtime)
    return _build_random(config, runtime, config.name, seed)


def _load_release(root: str | Path, runtime: RuntimeOptions, name: str, distilled: bool) -> WorldModel:
    """The released 5B checkpoint from a local folder or the hub, or a two-expert folder
    (``high_noise_model/`` + ``low_noise_model/``, the assumed mg3-28b-moe layout)."""
    from world_model.config import MoEConfig
    from world_model.vae import load_vae
    from world_model.weights import is_moe_folder, load_dit, load_moe_dit

    runtime = runtime.resolve_quantize(False).resolve_context_cache(None)  # bf16 weights; the release's computation
    if is_moe_folder(root):
        preset = mg3_28b_moe(distilled=distilled)
        boundary = preset.moe.boundary * preset.sampler.num_train_timesteps
        dit = _apply_runtime(load_moe_dit(root, boundary, device=runtime.device, dtype=runtime.dtype), runtime)
        vae = load_vae(root, device=runtime.device, dtype=runtime.dtype).eval()
        moe = MoEConfig(low_noise=dit.low_noise.cfg, boundary=preset.moe.boundary)
        config = preset.replace(dit=dit.cfg, moe=moe, vae=getattr(vae, "cfg", preset.vae))
        text = _text_encoder(config.text, root, runtime)
        return WorldModel(config, dit, vae, text, runtime, name, False, str(root))
    variant = "distilled" if distilled else "base"
    dit = _apply_runtime(load_dit(root, variant=variant, device=runtime.device, dtype=runtime.dtype).eval(), runtime)
    vae = load_vae(root, device=runtime.device, dtype=runtime.dtype).eval()
    config = mg3_5b(distilled=distilled).replace(dit=dit.cfg, vae=getattr(vae, "cfg", mg3_5b().vae))
    text = _text_encoder(config.text, root, runtime)
    return WorldModel(config, dit, vae, text, runtime, name, False, str(root))


EMBEDDED_DIR = Path(__file__).parent / "assets" / "embedded"
TEACHER_STEPS = 20  # sampling steps of our many-step teacher (no guidance: trained without action dropout)


def is_exported_folder(path: Path) -> bool:
    """A folder written by :func:`world_model.train.export.export_model`."""
    return (path / "config.json").is_file() and (path / "vae.safetensors").is_file()


_EXPORTED_SECTIONS = ("dit", "vae", "text", "stream")  # config.json sections with no safe default


def read_exported_config(path: Path) -> WorldModelConfig:
    """An exported folder's top-level ``config.json``; every problem is a CheckpointError naming it
    (a missing ``stream`` section would otherwise give the 5B's 704x1280 geometry)."""
    from world_model.checkpoint import CheckpointError, read_json_object
    from world_model.config import ConfigError

    data = read_json_object(path)
    missing = [k for k in _EXPORTED_SECTIONS if not isinstance(data.get(k), dict)]
    if missing:
        raise CheckpointError(
            f"{path} lacks the sections {missing}; an exported model's config.json holds "
            f"{list(_EXPORTED_SECTIONS)} (as world_model.train.export writes it)"
        )
    try:
        return WorldModelConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None


def _check_finite(tensors: dict[str, Tensor] | nn.Module, source: str) -> None:
    """Refuse NaN/inf weights (they load silently and give black frames); cheap at exported sizes."""
    from world_model.checkpoint import CheckpointError

    items = tensors.state_dict().items() if isinstance(tensors, nn.Module) else tensors.items()
    bad = [k for k, v in items if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensors hold NaN or infinity, e.g. {bad[:4]}; the weights are damaged"
        )


def load_exported_dit(
    folder: str | Path,
    config: WorldModelConfig,
    *,
    distilled: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The DiT of an exported folder whose ``config.json`` is ``config``: the few-step model
    (``base_distilled_model/``), the many-step teacher (``base_model/``, ``distilled=False``), or, when
    ``config.moe`` is set, the :class:`~world_model.moe.MoEDiT` of ``high_noise_model/`` and
    ``low_noise_model/`` (``world_model.train.export.combine_experts``; it has no teacher)."""
    from world_model.weights import load_dit, load_moe_dit

    if config.moe is None:
        return load_dit(folder, "distilled" if distilled else "base", device=device, dtype=dtype).eval()
    if not distilled:
        raise ValueError(
            f"{folder} holds two experts (high_noise_model/, low_noise_model/) and no many-step teacher "
            "(base_model/): load it with variant='distilled'"
        )
    boundary = config.moe.boundary * config.sampler.num_train_timesteps
    return load_moe_dit(folder, boundary, device=device, dtype=dtype).eval()


def _load_exported(folder: Path, runtime: RuntimeOptions, name: str, distilled: bool) -> WorldModel:
    """A model exported by our training pipeline (the embedded default, or any run's export/).

    Every file is checked strictly: the config (its file named in every error, ``stream`` required),
    the DiT and the VAE weights (keys and shapes, :func:`~world_model.checkpoint.check_state_dict`),
    and every weight finite. The 5B release folders load through their own path, without the
    finite check (it would read 20 GB once more)."""
    from world_model.checkpoint import check_state_dict, read_safetensors
    from world_model.vae import WanVAE
    from world_model.weights import MOE_SUBFOLDERS, dit_folder, stores_int8

    config = read_exported_config(folder / "config.json")
    dit = load_exported_dit(folder, config, distilled=distilled, device=runtime.device, dtype=runtime.dtype)
    layout = (
        "high_noise_model and low_noise_model"
        if config.moe is not None
        else f"{'base' if not distilled else 'base_distilled'}_model"
    )
    subfolders = (
        [folder / sub for sub in MOE_SUBFOLDERS.values()]
        if config.moe is not None
        else [dit_folder(folder, "distilled" if distilled else "base")]
    )
    runtime = runtime.resolve_quantize(all(stores_int8(f) for f in subfolders))
    runtime = runtime.resolve_context_cache(config.sampler.context_cache_refresh)
    _check_finite(dit, f"{folder}/{layout} weights")
    dit = _apply_runtime(dit, runtime)
    vae = WanVAE(config.vae)
    vae_path = folder / "vae.safetensors"
    vae_sd = read_safetensors(vae_path)
    check_state_dict({k: v.shape for k, v in vae.state_dict().items()}, vae_sd, vae_path)
    _check_finite(vae_sd, str(vae_path))
    vae.load_state_dict(vae_sd)
    vae = vae.to(runtime.device, runtime.dtype).eval()
    if not distilled:
        config = config.replace(
            name=config.name + "-teacher", sampler=config.sampler.replace(num_steps=TEACHER_STEPS, guidance_scale=1.0)
        )
    text = _text_encoder(config.text, None, runtime)
    image = folder / "default_image.png"
    prompt = folder / "default_prompt.txt"
    return WorldModel(
        config,
        dit,
        vae,
        text,
        runtime,
        name,
        False,
        str(folder),
        default_image=str(image) if image.is_file() else None,
        default_prompt=prompt.read_text().strip() if prompt.is_file() else None,
    )


def _default(runtime: RuntimeOptions, seed: int, distilled: bool = True) -> WorldModel:
    if not is_exported_folder(EMBEDDED_DIR):
        raise ValueError(
            f"the embedded default model's weights are missing from {EMBEDDED_DIR}; reinstall the package, "
            "or use 'tiny-random' (random weights, CPU) or 'mg3-5b' (the released checkpoint, GPU)"
        )
    if not distilled and not (EMBEDDED_DIR / "base_model").is_dir():
        raise ValueError(
            "the embedded model's many-step teacher is not shipped (it would double the package size); "
            "load it from the training run's export folder instead: "
            "load_world_model('runs/embedded/export', variant='base')"
        )
    return _load_exported(EMBEDDED_DIR, runtime, "default" if distilled else "default-teacher", distilled)


def _unreleased(name: str) -> WorldModel:
    raise ValueError(
        f"{name!r} is a preset for a checkpoint that is not released yet (world_model.config.mg3_28b_moe names "
        "every assumed value); load a local folder with high_noise_model/ and low_noise_model/ (each with "
        "config.json and diffusion_pytorch_model.safetensors) next to the VAE and T5 files, or use "
        f"'{name}-random' (random weights, for speed measurements)"
    )


_REGISTRY: dict[str, Callable[[RuntimeOptions, int], WorldModel]] = {
    "tiny-random": lambda rt, seed: _build_random(tiny(), rt, "tiny-random", seed),
    "mg3-5b": lambda rt, seed: _load_release(RELEASE_HUB_ID, rt, "mg3-5b", distilled=True),
    "mg3-5b-base": lambda rt, seed: _load_release(RELEASE_HUB_ID, rt, "mg3-5b-base", distilled=False),
    "mg3-5b-random": lambda rt, seed: _build_random(
        mg3_5b().replace(name="mg3-5b-random", text=mg3_5b().text.replace(kind="random")), rt, "mg3-5b-random", seed
    ),
    "mg3-28b-moe": lambda rt, seed: _unreleased("mg3-28b-moe"),
    "mg3-28b-moe-random": lambda rt, seed: _build_random(
        mg3_28b_moe().replace(name="mg3-28b-moe-random", text=mg3_5b().text.replace(kind="random")),
        rt,
        "mg3-28b-moe-random",
        seed,
    ),
    "default": _default,
    "default-teacher": lambda rt, seed: _default(rt, seed, distilled=False),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# a registry model -> its many-step model (``variant="base"``; the registry names each variant itself)
BASE_VARIANTS: dict[str, str] = {"default": "default-teacher", "mg3-5b": "mg3-5b-base"}


def load_world_model(
    name_or_path: str | Path = "tiny-random",
    runtime: RuntimeOptions | None = None,
    *,
    seed: int = 0,
    variant: str = "distilled",
) -> WorldModel:
    """Load a model by registry name (:data:`MODEL_NAMES`) or from a release-layout folder.

    ``seed`` fixes the weights of the random models (``*-random``; any other model's weights are read, and a seed
    other than 0 raises); ``runtime`` defaults to :meth:`RuntimeOptions.for_device` (bf16 on CUDA; on a CPU bf16
    where it has bf16 instructions, else fp32); ``variant`` (``"distilled"`` or ``"base"``) picks the few-step or
    the many-step model of a folder, or of a registry model that has both (:data:`BASE_VARIANTS`: ``"default"``
    with ``variant="base"`` is ``"default-teacher"``).
    """
    if variant not in ("distilled", "base"):
        raise ValueError(f"variant must be 'distilled' or 'base', got {variant!r}")
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    key = str(name_or_path)
    if whole(seed, "seed") != 0 and not key.endswith("-random"):
        raise ValueError(f"seed picks the weights of the random models ('*-random'); {key!r} reads its weights")
    if variant == "base" and key in _REGISTRY:
        if key not in BASE_VARIANTS:
            raise ValueError(
                f"variant='base' loads the many-step model of {sorted(BASE_VARIANTS)} or of a folder; "
                f"{key!r} has none (a registry name names its variant itself)"
            )
        key = BASE_VARIANTS[key]
    runtime = runtime or RuntimeOptions.for_device()
    check_runtime(runtime)  # before any weights are read
    if key in _REGISTRY:
        return _REGISTRY[key](runtime, seed)
    path = Path(key).expanduser()
    if path.is_dir():
        if is_exported_folder(path):
            return _load_exported(path, runtime, str(path), distilled=variant == "distilled")
        if (path / "vae.safetensors").is_file():  # an exported folder without its config (not a release folder)
            from world_model.checkpoint import CheckpointError

            raise CheckpointError(f"{path} holds an exported model's vae.safetensors but no config.json")
        return _load_release(path, runtime, str(path), distilled=variant == "distilled")
    raise ValueError(
        f"unknown model {key!r}: expected one of {list(MODEL_NAMES)} or a folder in the release layout "
        f"(with base_distilled_model/ and the VAE/T5 files)"
    )
