"""Architecture configs: frozen, self-validating dataclasses, one per part.

Architecture configs are saved next to the weights (``config.json``); runtime options (device,
dtype, attention backend, ...) live in :mod:`world_model.runtime` and are never saved.

Field names of :class:`DiTConfig` and :class:`ActionConfig` mirror the keys of the released
``base_model/config.json`` so that a release config reads without a rename table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "ActionConfig",
    "DiTConfig",
    "VAEConfig",
    "TextConfig",
    "SamplerConfig",
    "StreamConfig",
    "MoEConfig",
    "WorldModelConfig",
    "NEGATIVE_PROMPT",
    "RELEASE_DIT_DEFAULTS",
    "WAN22_LATENT_MEAN",
    "WAN22_LATENT_STD",
    "mg3_5b",
    "mg3_28b_moe",
    "tiny",
    "embedded",
]


class ConfigError(ValueError):
    """A config value is invalid; the message says which and why."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any], *, strict: bool) -> T:
    """Build a dataclass from a dict, converting lists to tuples and nested dicts to configs.

    ``strict=False`` ignores unknown keys (release config.json files carry extra keys such as
    ``_class_name``); ``strict=True`` rejects them.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if strict and unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            continue
        nested = _NESTED.get((cls.__name__, k))
        if nested is not None and isinstance(v, dict):
            v = _from_dict(nested, v, strict=strict)
        elif isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        _check_type(cls.__name__, names[k], v)
        kwargs[k] = v
    return cls(**kwargs)


def _check_type(owner: str, f: dataclasses.Field, value: Any) -> None:
    """A value read from a file of the type its field's default has (a bool, an int, a real number, a string, a
    tuple); fields without a plain default are left to the config's own checks. ``"fast"`` for an fps used to load
    and run."""
    default = f.default
    if default is dataclasses.MISSING or default is None or value is None:
        return
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple,)}.get(type(default))
    if expected is None:
        return
    if not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}
        raise ConfigError(f"{owner}.{f.name} must be {kind[type(default)]}, got {value!r}")


def _to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = _to_dict(v)
        elif isinstance(v, tuple):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


class _Config:
    """Mixin: dict/JSON round trips and ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True):
        return _from_dict(cls, data, strict=strict)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# --------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionConfig(_Config):
    """Keyboard/mouse action module (spec §4.3), present in ``blocks`` of the DiT."""

    blocks: tuple[int, ...] = tuple(range(15))
    keyboard_dim_in: int = 6
    mouse_dim_in: int = 2
    hidden_size: int = 128  # keyboard embedding width
    img_hidden_size: int = 3072  # = DiT dim
    keyboard_hidden_dim: int = 1024
    mouse_hidden_dim: int = 1024
    heads_num: int = 16
    windows_size: int = 3  # latents per action window (3 latents x 4 frames = 12 frames)
    vae_time_compression_ratio: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    qkv_bias: bool = False
    rope_dim_list: tuple[int, int, int] = (8, 28, 28)
    mouse_qk_dim_list: tuple[int, int, int] = (8, 28, 28)
    rope_theta: float = 256.0
    enable_mouse: bool = True
    enable_keyboard: bool = True
    # Spec §13.2: the release ignores the action module's q/k RMSNorm weights (normalise only, in the
    # input dtype); True applies the weight in fp32 like the later upstream fix. Not a release key.
    apply_qk_norm_weight: bool = False

    def __post_init__(self) -> None:
        _check(self.heads_num > 0, f"action heads_num ({self.heads_num}) must be positive")
        for name in ("keyboard_hidden_dim", "mouse_hidden_dim"):
            v = getattr(self, name)
            _check(v % self.heads_num == 0, f"action {name} ({v}) must be divisible by heads_num ({self.heads_num})")
        head_dim = self.mouse_hidden_dim // self.heads_num
        _check(
            sum(self.rope_dim_list) == head_dim,
            f"action rope_dim_list {self.rope_dim_list} must sum to the action head dim ({head_dim})",
        )
        _check(len(set(self.blocks)) == len(self.blocks), f"action blocks {self.blocks} contain duplicates")

    @property
    def head_dim(self) -> int:
        return self.mouse_hidden_dim // self.heads_num

    @property
    def frames_per_window(self) -> int:
        """Pixel frames seen by one latent's action window (12 for the release)."""
        return self.windows_size * self.vae_time_compression_ratio


@dataclass(frozen=True)
class DiTConfig(_Config):
    """The diffusion transformer (spec §1.1, §3). Keys mirror the release ``config.json``."""

    model_type: str = "ti2v"
    dim: int = 3072
    num_layers: int = 30
    num_heads: int = 24
    ffn_dim: int = 14336
    in_dim: int = 48
    out_dim: int = 48
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    window_size: tuple[int, int] = (-1, -1)
    use_memory: bool = True
    sigma_theta: float = 0.8  # head-wise perturbed RoPE base (spec §1.2)
    rope_max_len: int = 2048  # RoPE table length (latent time positions)
    vae_spatial_stride: int = 16  # pixels per latent pixel; sets the plucker channels (6 * stride^2)
    action_config: ActionConfig | None = field(default_factory=ActionConfig)

    def __post_init__(self) -> None:
        _check(self.dim > 0 and self.num_heads > 0, "dim and num_heads must be positive")
        _check(self.dim % self.num_heads == 0, f"num_heads ({self.num_heads}) must divide dim ({self.dim})")
        _check(self.head_dim % 2 == 0, f"head dim ({self.head_dim}) must be even for RoPE")
        _check(len(self.patch_size) == 3, f"patch_size must have 3 entries, got {self.patch_size}")
        _check(
            self.model_type in ("ti2v", "t2v", "i2v"), f"model_type must be ti2v, t2v or i2v, got {self.model_type!r}"
        )
        _check(0.0 <= self.sigma_theta < 1.0, f"sigma_theta ({self.sigma_theta}) must be in [0, 1)")
        _check(self.freq_dim % 2 == 0, f"freq_dim ({self.freq_dim}) must be even")
        if self.action_config is not None:
            a = self.action_config
            _check(
                a.img_hidden_size == self.dim,
                f"action_config.img_hidden_size ({a.img_hidden_size}) must equal dim ({self.dim})",
            )
            bad = [b for b in a.blocks if not 0 <= b < self.num_layers]
            _check(not bad, f"action_config.blocks {bad} out of range for num_layers ({self.num_layers})")
            _check(
                tuple(a.patch_size) == tuple(self.patch_size),
                f"action_config.patch_size {a.patch_size} must equal patch_size {self.patch_size}",
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def plucker_channels(self) -> int:
        """Channels of the per-latent-pixel camera embedding: [origin, direction] per pixel."""
        return 6 * self.vae_spatial_stride**2

    @classmethod
    def from_release(cls, data: dict[str, Any]) -> DiTConfig:
        """Read a release ``config.json`` dict the way the release's model constructor does.

        The release builds its DiT with ``WanModel.from_pretrained(dir, **config)``, so every key the
        file holds is used as given and every key it lacks takes the constructor's default, listed in
        :data:`RELEASE_DIT_DEFAULTS` (spec §1.1, §1.2, §15.4):

        - Wan2.2's constructor keys: ``patch_size`` (1, 2, 2), ``text_len`` 512, ``in_dim`` 16,
          ``dim`` 2048, ``ffn_dim`` 8192, ``freq_dim`` 256, ``text_dim`` 4096 (absent from the
          release's file: the 4096 of umt5-xxl), ``out_dim`` 16, ``num_heads`` 16, ``num_layers`` 32,
          ``window_size`` (-1, -1), ``qk_norm`` True, ``cross_attn_norm`` True, ``eps`` 1e-6. The
          size keys are Wan's generic ones, not the 5B's: a file without them builds a model that
          the 5B weights do not fit, and loading stops with a key/shape error, as in the release.
        - ``model_type``: Wan's default is ``t2v``; the forward treats ``t2v`` and ``ti2v`` alike
          (only ``i2v`` takes an extra input), so an absent key reads as ``ti2v`` (spec §1.1), the
          same computation.
        - MG3's additions: ``use_memory`` True (the norm3 residual quirk and the 2048-entry RoPE
          table), ``sigma_theta`` **0.0** (plain Wan RoPE, base 10000; spec §15.4: the 0.8 of
          :class:`DiTConfig` and ``mg3_5b`` is the third-party ports' value, used only when the
          file says so), ``action_config`` absent -> no action module [INF: the release builds
          action blocks only from the config it is given]. Keys missing inside a given
          ``action_config`` take :class:`ActionConfig`'s values (the 5B's, spec §1.1).
        - Not release keys, derived as the release fixes them: ``rope_max_len`` 2048 with memory,
          1024 without (spec §1.2); ``vae_spatial_stride`` 16 (1536 Plücker channels).

        Extra keys (``_class_name``, ``is_action_model``, ``use_text_crossattn``, ...) are ignored.
        """
        values = {**RELEASE_DIT_DEFAULTS, **data}
        if "rope_max_len" not in data:
            values["rope_max_len"] = 2048 if values["use_memory"] else 1024
        return cls.from_dict(values, strict=False)


# What the release's DiT constructor uses for a key its config.json lacks (see DiTConfig.from_release).
RELEASE_DIT_DEFAULTS: dict[str, Any] = {
    "model_type": "ti2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "use_memory": True,
    "sigma_theta": 0.0,
    "action_config": None,
    "vae_spatial_stride": 16,
}


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

# 48 latent normalisation constants of the Wan2.2 VAE (spec §7.1).
WAN22_LATENT_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENT_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig(_Config):
    """The causal 3-D video VAE of the Wan2.2 family (spec §7).

    The release: z_dim 48, encoder base 160, decoder base 256, dim_mult (1, 2, 4, 4), 2x2 pixel
    (un)shuffle, so 16x spatial and 4x temporal compression. ``pruning_rate`` scales the decoder
    widths by (1 - p) (MG-LightVAE). Smaller variants change widths, z_dim and the number of
    spatial downsamples (e.g. 8x spatial for low resolutions).
    """

    z_dim: int = 48
    encoder_dim: int = 160
    decoder_dim: int = 256
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per down stage (len(dim_mult) - 1)
    spatial_downsample: tuple[bool, ...] = (True, True, True)  # per down stage
    patch_size: int = 2  # pixel (un)shuffle factor
    pruning_rate: float = 0.0  # decoder width scale 1 - p
    latent_mean: tuple[float, ...] = WAN22_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN22_LATENT_STD

    def __post_init__(self) -> None:
        n = len(self.dim_mult) - 1
        _check(n >= 1, f"dim_mult needs at least 2 entries, got {self.dim_mult}")
        _check(
            len(self.temporal_downsample) == n, f"temporal_downsample needs {n} entries, got {self.temporal_downsample}"
        )
        _check(
            len(self.spatial_downsample) == n, f"spatial_downsample needs {n} entries, got {self.spatial_downsample}"
        )
        _check(0.0 <= self.pruning_rate < 1.0, f"pruning_rate ({self.pruning_rate}) must be in [0, 1)")
        _check(
            len(self.latent_mean) == self.z_dim,
            f"latent_mean has {len(self.latent_mean)} values, z_dim is {self.z_dim}",
        )
        _check(
            len(self.latent_std) == self.z_dim, f"latent_std has {len(self.latent_std)} values, z_dim is {self.z_dim}"
        )
        _check(all(s > 0 for s in self.latent_std), "latent_std values must be positive")

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** sum(self.spatial_downsample)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def pruned_decoder_dim(self) -> int:
        return int(round(self.decoder_dim * (1.0 - self.pruning_rate)))

    def num_frames(self, num_latents: int, first_chunk: bool) -> int:
        """Pixel frames produced by decoding ``num_latents`` (spec §7.2: 15 -> 57, then 10 -> 40)."""
        r = self.temporal_stride
        return 1 + r * (num_latents - 1) if first_chunk else r * num_latents


# --------------------------------------------------------------------------------------------
# Text, sampler, streaming
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextConfig(_Config):
    """Text encoder. ``umt5-xxl`` for the release; ``minilm`` (all-MiniLM-L6-v2) for the default."""

    kind: str = "umt5-xxl"
    text_len: int = 512
    dim: int = 4096
    max_prompt_chars: int = 2000

    def __post_init__(self) -> None:
        _check(
            self.kind in ("umt5-xxl", "minilm", "random"),
            f"text kind must be umt5-xxl, minilm or random, got {self.kind!r}",
        )
        _check(self.text_len > 0 and self.dim > 0, "text_len and dim must be positive")
        _check(self.max_prompt_chars >= 1, f"max_prompt_chars must be >= 1, got {self.max_prompt_chars}")


# The release's negative prompt for base-model CFG, word for word (its wan/configs/config.py; spec §15.3).
NEGATIVE_PROMPT = (
    "Vibrant colors, overexposure, static, blurred details, subtitles, style, artwork, painting, still image, "
    "overall grayness, worst quality, low quality, JPEG compression residue, ugly, mutilated, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, malformed limbs, fused fingers, still image, "
    "cluttered background, three legs, crowded background, walking backwards"
)


@dataclass(frozen=True)
class SamplerConfig(_Config):
    """Flow-matching UniPC sampler (spec §6 step 2)."""

    num_steps: int = 3
    shift: float = 5.0
    num_train_timesteps: int = 1000
    solver_order: int = 2
    guidance_scale: float = 1.0  # 5.0 with the base (non-distilled) model
    negative_prompt: str = NEGATIVE_PROMPT
    # action guidance (ours, not the release's): > 1 adds a DiT call per sampler step with the same
    # prompt, camera and memory but null actions, v = v_null + s·(v − v_null). It amplifies what the
    # actions add; meaningful for a model trained with action dropout (FlowOptions.p_drop_actions)
    action_guidance: float = 1.0
    # memory guidance (ours): > 1 adds a DiT call per sampler step of a window with memory, the same prompt, camera
    # and actions without the retrieved memory, v = v_free + s·(v − v_free): it amplifies what the memory adds
    memory_guidance: float = 1.0
    # the context cache this model was measured with (ours): None, not measured; r >= 0, the refresh with which
    # RuntimeOptions(context_cache="auto") (a CPU's default) runs it (RuntimeOptions.context_cache_refresh); read when
    # the model is loaded (WorldModel.with_sampler also sets a loaded model's refresh where it runs the cache)
    context_cache_refresh: int | None = None

    def __post_init__(self) -> None:
        _check(self.num_steps >= 1, f"num_steps ({self.num_steps}) must be >= 1")
        _check(
            self.context_cache_refresh is None
            or (type(self.context_cache_refresh) is int and self.context_cache_refresh >= 0),
            f"context_cache_refresh ({self.context_cache_refresh!r}) must be None or an int >= 0",
        )
        _check(self.shift > 0, f"shift ({self.shift}) must be positive")
        _check(self.guidance_scale >= 1.0, f"guidance_scale ({self.guidance_scale}) must be >= 1")
        _check(self.action_guidance >= 1.0, f"action_guidance ({self.action_guidance}) must be >= 1 (1: off)")
        _check(self.memory_guidance >= 1.0, f"memory_guidance ({self.memory_guidance}) must be >= 1 (1: off)")
        _check(
            sum(g > 1.0 for g in (self.guidance_scale, self.action_guidance, self.memory_guidance)) <= 1,
            f"guidance_scale ({self.guidance_scale}), action_guidance ({self.action_guidance}) and memory_guidance "
            f"({self.memory_guidance}): more than one > 1 is not supported (each adds its own second DiT call per "
            "step; the release's guidance already drops the actions and the memory): choose one and set the others to 1",
        )


@dataclass(frozen=True)
class StreamConfig(_Config):
    """The streaming loop's geometry (spec §6, §5.4) and camera constants (§5.1-5.2)."""

    height: int = 704
    width: int = 1280
    num_memory: int = 5  # memory latents per chunk (k >= 1)
    past_latents: int = 4  # clean context latents per chunk (k >= 1)
    new_latents: int = 10  # generated latents per chunk (k >= 1)
    first_latents: int = 15  # latents of the first chunk (1 image + 14 generated)
    sink_latent: int = 1  # memory slot 5 is hard-wired to this latent (spec §13.5)
    fov_deg: float = 90.0
    move_speed: float = 12.35  # units per frame
    move_speed_diag: float = 8.73
    degrees_per_mouse_unit: float = 15.0
    mouse_deadzone: float = 0.02
    fps: float = 16.0  # frames per second of the video (the release: 16; the ViZDoom engine: 35/2 = 17.5)
    # memory retrieval (spec §5.4): query frames end - offset; frustum grid of memory_grid^3 points
    memory_query_offsets: tuple[int, ...] = (1, 9, 17, 25, 33)
    memory_grid: int = 10
    memory_near: float = 0.1  # metres
    memory_far: float = 30.0  # metres

    def __post_init__(self) -> None:
        _check(self.height > 0 and self.width > 0, "height and width must be positive")
        _check(math.isfinite(self.fps) and self.fps > 0, f"fps must be a finite number > 0, got {self.fps}")
        _check(
            self.num_memory >= 0 and self.past_latents >= 1 and self.new_latents >= 1, "latent counts must be positive"
        )
        _check(
            len(self.memory_query_offsets) >= self.num_memory,
            f"memory_query_offsets {self.memory_query_offsets} needs at least num_memory ({self.num_memory}) entries",
        )
        _check(
            all(o >= 1 for o in self.memory_query_offsets),
            f"memory_query_offsets {self.memory_query_offsets} must all be >= 1 (query frame = window end - offset)",
        )
        _check(self.memory_grid >= 1, f"memory_grid ({self.memory_grid}) must be >= 1")
        _check(
            0.0 <= self.memory_near < self.memory_far,
            f"memory depth range ({self.memory_near}, {self.memory_far}) must satisfy 0 <= near < far",
        )


@dataclass(frozen=True)
class MoEConfig(_Config):
    """Two DiT experts switched by timestep, Wan2.2-A14B style (spec §1.3): a high-noise expert for the
    early steps and a low-noise expert for the late ones.

    In a :class:`WorldModelConfig` with ``moe`` set, ``dit`` is the high-noise expert (it carries the
    action module, so it defines the action space) and ``low_noise`` the low-noise expert. A sampling
    step runs the high-noise expert when its timestep (as the model sees it, bf16-rounded, spec §13.3)
    is >= ``boundary * num_train_timesteps``, else the low-noise expert. Wan2.2 uses 0.900 for I2V
    and 0.875 for T2V.
    """

    low_noise: DiTConfig = field(default_factory=DiTConfig)
    boundary: float = 0.9

    def __post_init__(self) -> None:
        _check(0.0 < self.boundary < 1.0, f"moe boundary ({self.boundary}) must be in (0, 1)")


@dataclass(frozen=True)
class WorldModelConfig(_Config):
    """A whole world model: DiT + VAE + text + sampler + stream geometry."""

    name: str = "mg3-5b"
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    moe: MoEConfig | None = None  # two experts (mg3-28b-moe); None: one DiT

    def __post_init__(self) -> None:
        if self.moe is not None:
            low, high = self.moe.low_noise, self.dit
            for name in (
                "in_dim",
                "out_dim",
                "patch_size",
                "text_len",
                "text_dim",
                "vae_spatial_stride",
                "rope_max_len",
            ):
                _check(
                    getattr(low, name) == getattr(high, name),
                    f"moe.low_noise.{name} ({getattr(low, name)}) must equal dit.{name} ({getattr(high, name)}): "
                    "both experts denoise the same latents with the same text and camera inputs",
                )
        s = self.vae.spatial_stride
        _check(
            self.stream.height % (s * self.dit.patch_size[1]) == 0
            and self.stream.width % (s * self.dit.patch_size[2]) == 0,
            f"frame size {self.stream.height}x{self.stream.width} must be divisible by "
            f"{s * self.dit.patch_size[1]}x{s * self.dit.patch_size[2]} (VAE stride x patch)",
        )
        _check(
            self.dit.in_dim == self.vae.z_dim, f"dit.in_dim ({self.dit.in_dim}) must equal vae.z_dim ({self.vae.z_dim})"
        )
        _check(
            self.dit.vae_spatial_stride == s,
            f"dit.vae_spatial_stride ({self.dit.vae_spatial_stride}) must equal the VAE's ({s})",
        )
        _check(
            self.dit.text_dim == self.text.dim,
            f"dit.text_dim ({self.dit.text_dim}) must equal text.dim ({self.text.dim})",
        )
        _check(
            self.dit.text_len == self.text.text_len,
            f"dit.text_len ({self.dit.text_len}) must equal text.text_len ({self.text.text_len})",
        )
        _check(
            self.stream.first_latents > self.stream.past_latents,
            "first_latents must exceed past_latents",
        )

    @property
    def latent_hw(self) -> tuple[int, int]:
        s = self.vae.spatial_stride
        return self.stream.height // s, self.stream.width // s

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WorldModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


_NESTED: dict[tuple[str, str], type] = {
    ("DiTConfig", "action_config"): ActionConfig,
    ("WorldModelConfig", "dit"): DiTConfig,
    ("WorldModelConfig", "vae"): VAEConfig,
    ("WorldModelConfig", "text"): TextConfig,
    ("WorldModelConfig", "sampler"): SamplerConfig,
    ("WorldModelConfig", "stream"): StreamConfig,
    ("WorldModelConfig", "moe"): MoEConfig,
    ("MoEConfig", "low_noise"): DiTConfig,
}


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def mg3_5b(distilled: bool = True) -> WorldModelConfig:
    """The released Matrix-Game 3.0 5B model (spec §1.1): 3-step distilled or the 50-step base."""
    sampler = SamplerConfig() if distilled else SamplerConfig(num_steps=50, guidance_scale=5.0)
    return WorldModelConfig(name="mg3-5b" if distilled else "mg3-5b-base", sampler=sampler)


def mg3_28b_moe(distilled: bool = True, boundary: float = 0.9) -> WorldModelConfig:
    """Matrix-Game 3.0 28B (2 x 14B MoE): a preset for a checkpoint that is NOT released yet (spec §1.3).

    Every value here is assumed; nothing has been checked against real weights:

    - expert sizes: dim 5120, 40 layers, 40 heads (head dim 128, so the 5B's RoPE layout), FFN 13824,
      in/out 48 channels: the 14B-class sizes in the release's own ``wan/configs/config.py``
      (spec §1.3, §15.5), on the Wan2.2 48-channel VAE at 704x1280 like the 5B;
    - the high-noise expert carries the action module, in the first half of its blocks (0-19, as
      the 5B has it in 0-14 of 30) with the 5B's action sizes; the low-noise expert has none (the
      report: the low-noise model is trained without action modules); both keep the camera layers
      and memory, and the 5B's ``sigma_theta`` 0.8;
    - parameters: with the 5B's four d x d camera layers per block, the experts hold 19.14 B (high
      noise) and 18.57 B (low noise), 37.7 B in all (75 GB in bf16); the name's "2 x 14B" suggests
      the real experts count or build their camera layers differently, which is unknown;
    - switch ``boundary`` 0.900 (Wan2.2-A14B I2V; T2V uses 0.875);
    - text encoder, VAE, stream geometry and sampler as the 5B: 3 steps (``distilled``, no
      guidance) or 50 steps with guidance 5.0 (base). With 3 steps the model sees timesteps
      1000, 908, 712: two high-noise steps, then one low-noise step.
    - weights folder: one subfolder per expert, ``high_noise_model/`` and ``low_noise_model/``
      (Wan2.2-A14B's layout), each with ``config.json`` and safetensors (world_model.weights).
    """
    dim = 5120

    def expert(action: ActionConfig | None) -> DiTConfig:
        return DiTConfig(
            dim=dim, num_layers=40, num_heads=40, ffn_dim=13824, in_dim=48, out_dim=48, action_config=action
        )

    high = expert(ActionConfig(blocks=tuple(range(20)), img_hidden_size=dim))
    sampler = SamplerConfig() if distilled else SamplerConfig(num_steps=50, guidance_scale=5.0)
    return WorldModelConfig(
        name="mg3-28b-moe" if distilled else "mg3-28b-moe-base",
        dit=high,
        sampler=sampler,
        moe=MoEConfig(low_noise=expert(None), boundary=boundary),
    )


def tiny(height: int = 64, width: int = 64) -> WorldModelConfig:
    """A tiny random-weight model for tests: every part of the architecture, small dims.

    VAE: 8x spatial (patch 2, two spatial downsamples), 4x temporal, z_dim 8.
    DiT: dim 64, 4 heads (head dim 16), 2 layers, action module in block 0.
    """
    z = 8
    vae = VAEConfig(
        z_dim=z,
        encoder_dim=8,
        decoder_dim=8,
        dim_mult=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        spatial_downsample=(True, True),
        latent_mean=(0.0,) * z,
        latent_std=(1.0,) * z,
    )
    action = ActionConfig(
        blocks=(0,),
        hidden_size=8,
        img_hidden_size=64,
        keyboard_hidden_dim=32,
        mouse_hidden_dim=32,
        heads_num=2,
        rope_dim_list=(4, 6, 6),
        mouse_qk_dim_list=(4, 6, 6),
    )
    dit = DiTConfig(
        dim=64,
        num_layers=2,
        num_heads=4,
        ffn_dim=128,
        in_dim=z,
        out_dim=z,
        text_len=16,
        text_dim=32,
        freq_dim=32,
        vae_spatial_stride=vae.spatial_stride,
        action_config=action,
    )
    text = TextConfig(kind="random", text_len=16, dim=32)
    stream = StreamConfig(height=height, width=width)
    return WorldModelConfig(name="tiny-random", dit=dit, vae=vae, text=text, stream=stream)


def embedded() -> WorldModelConfig:
    """The small model shipped in the package ("mg3-embedded"), trained by ``world_model.train``.

    Geometry: 128x128 pixels; VAE 8x spatial (patch 2 x two downsamples), 4x temporal, z_dim 16,
    so a latent frame is 16x16 and a DiT token grid 8x8 = 64 tokens. A chunk is 5 memory + 4 past
    + 10 new latents = 19 frames, L = 19 * 64 = 1216 tokens.

    Size (parameters): per DiT block 12 d^2 (self q/k/v/o, cross q/k/v/o, 4 camera layers) +
    2 d ffn = 1.229M + 0.655M = 1.88M at d = 320, ffn 1024; 8 blocks = 15.1M; action module in
    blocks 0-3 (hidden 128) ~0.33M each = 1.3M; embeddings/head ~1.8M. Total ~18.2M parameters,
    ~36.5 MB in bf16, plus the VAE (encoder widths 32/64/64, decoder pruned to 40/40/40/20, 1.69M,
    3.4 MB): 39.9 MB in all, under the 40 MB bar of the package.

    CPU speed (2 cores, fp32 GEMM ~150 GFLOP/s measured at these shapes, bf16 ~400): one DiT
    forward per token per block = 2 (10 d^2 + 2 d ffn) = 3.36 MFLOP of projections + 4 L d = 1.56
    MFLOP of attention -> 4.92 MFLOP x 1216 tokens x 8 blocks = 47.8 GFLOP, plus action module
    (2.3 GFLOP), camera and time embeddings (3.2 GFLOP): ~53 GFLOP. Three sampler steps ~160
    GFLOP ~ 1.1 s (the shipped four: ~210 GFLOP; measured 1.80 s per chunk in all, 22.2 frames/s).
    The pruned decoder (widths 40/40/40/20, half the trained full decoder's 80/80/80/40) decoding 10
    latents -> 40 frames is ~42 GFLOP of 3x3x3 convolutions, ~0.3 s (measured 2026-12-02: 0.39 s;
    the full decoder 1.00 s, which the model shipped since session 30 carries: 18.8-18.9 frames/s in bf16). Chunk ~1.4 s
    (measured on an idle 2-core EPYC: 1.66 s, 24.2 frames/s, `python bench/embedded_speed.py --model
    EXPORT --device cpu`; the first embedded model's narrower decoder: 1.50 s, 26.6 frames/s)
    < 2.3 s, i.e. >= 17.5 frames/s of 40. (The first embedded model's decoder, 32/32/32/16, was
    trained for 632 steps only, and every frame was a blur.)

    Camera/motion constants follow the ViZDoom data engine (``world_model/data/README.md``).
    """
    z = 16
    vae = VAEConfig(
        z_dim=z,
        encoder_dim=32,
        decoder_dim=40,  # full decoder 80/80/80/40; the export's pruned to half, 40/40/40/20 (shipped: the full one)
        dim_mult=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        spatial_downsample=(True, True),
        patch_size=2,
        pruning_rate=0.5,
        latent_mean=(0.0,) * z,  # replaced by measured statistics when the VAE is trained
        latent_std=(1.0,) * z,
    )
    dim = 320
    action = ActionConfig(
        blocks=(0, 1, 2, 3),
        hidden_size=32,
        img_hidden_size=dim,
        keyboard_hidden_dim=128,
        mouse_hidden_dim=128,
        heads_num=2,
        rope_dim_list=(8, 28, 28),
        mouse_qk_dim_list=(8, 28, 28),
    )
    dit = DiTConfig(
        dim=dim,
        num_layers=8,
        num_heads=5,
        ffn_dim=1024,
        in_dim=z,
        out_dim=z,
        text_len=32,
        text_dim=384,
        freq_dim=256,
        vae_spatial_stride=vae.spatial_stride,
        action_config=action,
    )
    text = TextConfig(kind="minilm", text_len=32, dim=384)
    # ViZDoom renders 90 degrees horizontally at 4:3; the square 128x128 frame is a centre crop of the
    # 320x240 mode, so fx = fy = 160 * 128 / 240 = 85.33 px: 2 atan(64 / 85.33) = 73.74 degrees.
    stream = StreamConfig(height=128, width=128, fov_deg=73.74, fps=17.5)  # 2 Doom tics per frame
    # 4 steps at shift 3, the shipped sampler since session 6 (the release's 3 at shift 5 gave blurrier
    # frames: sharpness 0.20 vs 0.30 of the simulator's); in the preset, so that the training's held-out
    # evaluation, its own-history sampling and the export all use what is shipped
    sampler = SamplerConfig(num_steps=4, shift=3.0, guidance_scale=1.0)
    return WorldModelConfig(name="mg3-embedded", dit=dit, vae=vae, text=text, sampler=sampler, stream=stream)
