"""MatrixGameVectorEnv: B world-model rollouts stepped together, on one device or several.

Gymnasium 1.x vector semantics: batched observations, ``info`` as a dict of arrays with ``_key``
masks, autoreset mode declared in ``metadata["autoreset_mode"]`` (``NEXT_STEP`` by default;
``SAME_STEP`` puts ``final_obs`` / ``final_info`` in ``info``; ``DISABLED`` resets with
``reset(options={"reset_mask": mask})``).

One step = one chunk of video per env (40 frames for the release). ``reset`` primes the model:
it encodes the image and the prompt and generates the first chunk (57 frames) with the no-op
action (or ``options["action"]``); the observation holds its last 40 frames and ``info`` all of
them (``first_chunk_frames``, ``first_chunk_pose``, ``first_chunk_c2w``, ``first_chunk_keyboard``,
``first_chunk_mouse``). Episodes never terminate; they are truncated after ``max_chunks`` steps.
Poses are commanded (integrated from the actions), not estimated from the video.

``devices=["cuda:0", "cuda:1", ...]`` spreads the envs over devices: env i belongs to one
contiguous group per device (sizes as even as possible, the first groups take the remainder),
each group a batch with its own stream state, on a copy of the model's weights on that device
(loaded once, copied device to device; groups on one device share it). Groups step concurrently,
one thread each (GPU kernels release the GIL). Each env draws its noise from its own seeded
generator, so the frames are those of one device up to the rounding of batched kernels. A device
may repeat (``["cpu", "cpu"]``: two groups on the CPU, correct but not faster).

Steps and resets are all-or-nothing: inputs and seeds are checked before any work, and if
anything fails during the call (the reward function, one device group, building the info) every
env is put back exactly as it was before the call (streaming states, noise generators, decode
caches, observations, the seed RNG) and the error is raised; calling again repeats the same
chunk. Device groups never continue out of step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from importlib import resources
from numbers import Real
from typing import Any, TypeVar

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from mg3_env.rewards import RewardFn, zero_reward
from mg3_env.spaces import (
    load_image,
    make_action_space,
    make_observation_space,
    validate_batched_action,
    validate_prompt,
)
from world_model.checks import MAX_SEED, whole
from world_model.generator import ChunkActions, ChunkOutput, StreamingGenerator, StreamState
from world_model.model import WorldModel, load_world_model
from world_model.runtime import RuntimeOptions, checked_device

__all__ = ["MatrixGameVectorEnv", "DEFAULT_PROMPT", "default_image_path", "resolve_devices", "split_envs"]

DEFAULT_PROMPT = "A sunny suburban street with colourful houses and trees, seen in first person."
_RESET_OPTIONS = ("image", "prompt", "action", "reset_mask")
_R = TypeVar("_R")


def default_image_path() -> str:
    """The packaged default first frame (a procedurally drawn street scene)."""
    return str(resources.files("world_model") / "assets" / "default_image.png")


def resolve_devices(devices: Any, num_envs: int) -> tuple[torch.device, ...]:
    """Check a list of device names (repeats allowed) for ``num_envs`` envs; ``"cuda"`` -> ``cuda:<current>``.

    Raises ValueError for an empty or non-list value, an unknown device, a CUDA device this machine
    lacks, and more devices than envs (every device group needs at least one env).
    """
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    if not isinstance(devices, Sequence) or len(devices) == 0:
        raise ValueError(
            f"devices must be a non-empty list like ['cuda:0', 'cuda:1'] (repeats allowed), got {devices!r}"
        )
    out = [checked_device(d) for d in devices]
    if len(out) > num_envs:
        raise ValueError(
            f"{len(out)} devices for {num_envs} envs: every device needs at least one env; "
            f"use num_envs >= {len(out)} or fewer devices"
        )
    return tuple(out)


def split_envs(num_envs: int, num_groups: int) -> tuple[range, ...]:
    """Contiguous env ranges, sizes as even as possible, the first groups one larger (5, 2 -> [0, 3), [3, 5))."""
    size, extra = divmod(num_envs, num_groups)
    bounds = [0]
    for g in range(num_groups):
        bounds.append(bounds[-1] + size + (g < extra))
    return tuple(range(a, b) for a, b in zip(bounds[:-1], bounds[1:]))


@dataclass
class _DeviceGroup:
    """Envs ``envs`` of the vector env: one batch on ``device`` with its own generator and state."""

    device: torch.device
    envs: range
    generator: StreamingGenerator
    state: StreamState | None


class MatrixGameVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` Matrix-Game rollouts generated as one batch per device group.

    Args:
        num_envs: envs in the batch.
        model: a registry name or path (see :func:`world_model.model.load_world_model`) or a
            loaded :class:`~world_model.model.WorldModel` (share one between envs).
        runtime: device/dtype options when ``model`` is a name (``devices`` overrides its device).
        devices: None (one batch on the model's device) or a list of devices, e.g.
            ``["cuda:0", "cuda:1"]`` (repeats allowed): the envs are split into one contiguous group
            per entry (see :func:`split_envs`), each stepped on its device, concurrently.
        image, prompt: the default first frame and prompt (used when ``reset`` gets none, and by
            autoreset); image as an H x W x 3 uint8 array, a PIL image or a path.
        reward_fn: ``reward_fn(obs, action, info) -> float`` per env and step (default 0).
        max_chunks: steps per episode before truncation.
        render_mode: None, ``"rgb_array"`` (``render()`` gives each env's latest frame) or
            ``"rgb_array_list"`` (``render()`` gives each env's frames generated since the last
            ``render()``: 57 after a reset, 40 per step; a video of them plays in real time at
            ``metadata["render_fps"]``, the model's fps).
        autoreset_mode: a :class:`gymnasium.vector.AutoresetMode`.
    """

    metadata = {
        "render_modes": ["rgb_array", "rgb_array_list"],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_fps": 16,
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        model: str | WorldModel = "default",
        runtime: RuntimeOptions | None = None,
        devices: Sequence[str | torch.device] | None = None,
        image: Any = None,
        prompt: str | None = None,
        reward_fn: RewardFn = zero_reward,
        max_chunks: int = 50,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        num_envs = whole(num_envs, "num_envs", 1)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'rgb_array_list', got {render_mode!r}")
        try:  # checked before the model loads
            autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            modes = ", ".join(repr(m.value) for m in AutoresetMode)
            raise ValueError(
                f"autoreset_mode must be an AutoresetMode or one of {modes}, got {autoreset_mode!r}"
            ) from None
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be a callable (obs, action, info) -> float, got {reward_fn!r}")
        self._groups = self._build_groups(int(num_envs), model, runtime, devices)
        self._pool = (
            ThreadPoolExecutor(len(self._groups), thread_name_prefix="mg3-device") if len(self._groups) > 1 else None
        )
        self.generator = self._groups[0].generator  # geometry; the same for every group
        self.model = self.generator.model  # text encoding and metadata
        cfg = self.model.config
        capacity = (cfg.dit.rope_max_len - cfg.stream.first_latents) // cfg.stream.new_latents
        whole(
            max_chunks, "max_chunks", 1, capacity, note=f"the model's RoPE table holds {cfg.dit.rope_max_len} latents"
        )
        self.num_envs = int(num_envs)
        self.max_chunks = int(max_chunks)
        self.reward_fn = reward_fn
        self.render_mode = render_mode
        self.autoreset_mode = autoreset_mode
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode, "render_fps": cfg.stream.fps}
        s = cfg.stream
        self.height, self.width = s.height, s.width
        self.frames_per_chunk = self.generator.chunk_frames
        kdim = cfg.dit.action_config.keyboard_dim_in if cfg.dit.action_config is not None else 6
        self.keyboard_dim = kdim
        self.single_action_space = make_action_space(kdim, 2)
        self.single_observation_space = make_observation_space(self.frames_per_chunk, s.height, s.width)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        if image is None:
            image = self.model.default_image or default_image_path()
        if prompt is None:
            prompt = self.model.default_prompt or DEFAULT_PROMPT
        self.default_image = load_image(image, s.height, s.width)
        self.default_prompt = validate_prompt(prompt, cfg.text.max_prompt_chars)

        self._obs: list[dict[str, np.ndarray] | None] = [None] * self.num_envs
        self._unrendered: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]  # rgb_array_list
        self._prompts = [self.default_prompt] * self.num_envs
        self._done = np.zeros(self.num_envs, dtype=bool)  # episode ended at the last step
        self._started = False
        self.closed = False

    # ---- Gymnasium API -----------------------------------------------------------------------

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all envs (or ``options["reset_mask"]``) and generate their first chunk.

        ``seed``: an int (env i gets seed + i), a list of one per env (an entry None: drawn), or None
        (drawn from the env's own RNG). ``options``: ``image`` and ``prompt`` (one for all, or a list of one per
        env), ``action`` for the first chunk (batched like ``step``'s; default no-op),
        ``reset_mask`` ([B] bools).
        """
        self._check_open()
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(
                f"options must be a dict like {{'image': ..., 'prompt': ...}}, got {type(options).__name__}"
            )
        with self._all_or_nothing():
            return self._reset(seed, dict(options or {}))

    def _reset(self, seed: Any, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; expected some of {list(_RESET_OPTIONS)}")
        mask = self._reset_mask(options.get("reset_mask"))
        seeds = self._seeds(seed, mask)
        images = self._per_env(options.get("image"), "image", mask, self.default_image)
        images = [load_image(im, self.height, self.width) for im in images]
        prompts = self._per_env(options.get("prompt"), "prompt", mask, self.default_prompt)
        prompts = [validate_prompt(p, self.model.config.text.max_prompt_chars) for p in prompts]
        first_frames = self.generator.first_chunk_frames
        if options.get("action") is None:
            kb = np.zeros((self.num_envs, first_frames, self.keyboard_dim), np.float32)
            ms = np.zeros((self.num_envs, first_frames, 2), np.float32)
        else:
            kb, ms = validate_batched_action(options["action"], self.num_envs, first_frames, self.keyboard_dim)

        for i in np.flatnonzero(mask):  # rgb_array_list: a reset() drops the frames not rendered (Gymnasium's rule)
            self._unrendered[i] = []
        outputs = self._reset_envs(mask, images, prompts, seeds, kb, ms)
        infos: dict[str, Any] = {}
        for i, out in enumerate(outputs):
            if out is not None:
                infos = self._add_info(infos, self._reset_info(i, out, kb[i], ms[i]), i)
        self._done[mask] = False
        self._started = True
        return self._batched_obs(), infos

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One chunk per env. ``actions``: {"keyboard": [B, 6] or [B, T, 6], "mouse": [B, 2] or [B, T, 2]}."""
        self._check_open()
        self._check_started()
        kb, ms = validate_batched_action(actions, self.num_envs, self.frames_per_chunk, self.keyboard_dim)
        if self.autoreset_mode == AutoresetMode.DISABLED and self._done.any():
            raise RuntimeError(
                f"envs {np.flatnonzero(self._done).tolist()} are done (autoreset disabled); reset them with "
                "reset(options={'reset_mask': mask}) before stepping"
            )
        with self._all_or_nothing():
            return self._step_arrays(kb, ms)

    @property
    def needs_reset(self) -> np.ndarray:
        """[B] bools: the envs whose episode ended at the last step (reset next; a copy)."""
        return self._done.copy()

    def render(self) -> tuple[np.ndarray, ...] | tuple[list[np.ndarray], ...] | None:
        """Per env: in ``rgb_array`` mode its latest frame (uint8 [H, W, 3]); in ``rgb_array_list``
        mode the list of its frames generated since the last ``render()`` or its last ``reset()`` (every
        frame, in order; ``reset()`` drops the frames not rendered, as Gymnasium's list modes do, while an
        autoreset keeps them: the finished episode's last chunk, then the new one's first); else None."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without render_mode='rgb_array'; returning None")
            return None
        self._check_open()
        self._check_started()
        if self.render_mode == "rgb_array_list":
            frames, self._unrendered = self._unrendered, [[] for _ in range(self.num_envs)]
            return tuple(frames)
        return tuple(obs["frames"][-1] for obs in self._obs)  # type: ignore[index]

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for g in self._groups:
            g.state = None
        self._obs = [None] * self.num_envs
        self._unrendered = [[] for _ in range(self.num_envs)]

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """The device of each env group, in env order."""
        return tuple(g.device for g in self._groups)

    @property
    def env_groups(self) -> tuple[range, ...]:
        """The envs of each device group (contiguous ranges, in env order)."""
        return tuple(g.envs for g in self._groups)

    @property
    def stream_states(self) -> tuple[StreamState, ...]:
        """The streaming state of each device group (env ``g.envs[j]`` is entry j of group g's state)."""
        return tuple(g.state for g in self._groups)  # type: ignore[misc]

    @property
    def _state(self) -> StreamState:
        """The stream state of a single-group env (its envs in order)."""
        if len(self._groups) != 1:
            raise AttributeError(f"this env has {len(self._groups)} device groups; use stream_states")
        return self._groups[0].state  # type: ignore[return-value]

    # ---- internals ---------------------------------------------------------------------------

    def _step_arrays(self, kb: np.ndarray, ms: np.ndarray):
        """Step with validated per-frame actions keyboard [B, T, K], mouse [B, T, 2]."""
        b = self.num_envs
        rewards = np.zeros(b, dtype=np.float64)
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        infos: dict[str, Any] = {}
        autoreset = self._done.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros(b, bool)
        if autoreset.any():  # NEXT_STEP: these envs reset now; their actions are ignored
            infos = self._autoreset(autoreset, infos)
        chunk_actions = [
            None if autoreset[i] else ChunkActions(torch.from_numpy(kb[i]), torch.from_numpy(ms[i])) for i in range(b)
        ]
        outputs = self._generate(chunk_actions)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        final_infos: dict[str, Any] = {}  # SAME_STEP: the finished episodes' last step info (theirs alone)
        for i, out in enumerate(outputs):
            if out is None:
                continue
            obs = self._set_obs(i, out)
            info = self._chunk_info(i, out)
            info["keyboard"], info["mouse"] = kb[i], ms[i]
            rewards[i] = _reward(self.reward_fn(obs, {"keyboard": kb[i], "mouse": ms[i]}, info))
            truncated[i] = out.chunk_index >= self.max_chunks
            if same_step and (terminated[i] or truncated[i]):
                final_infos = self._add_info(final_infos, info, i)
            else:
                infos = self._add_info(infos, info, i)
        self._done = terminated | truncated
        if same_step and self._done.any():
            final_obs = [self._obs[i] for i in range(b)]
            done = self._done.copy()
            # a finished env's info is its new episode's reset info, as Gymnasium's SAME_STEP
            infos = self._autoreset(done, infos)
            infos["final_obs"] = np.empty(b, dtype=object)
            for i in np.flatnonzero(done):
                infos["final_obs"][i] = final_obs[i]
            infos["_final_obs"] = done
            infos["final_info"] = final_infos
            infos["_final_info"] = done
            self._done[:] = False
        return self._batched_obs(), rewards, terminated, truncated, infos

    def _autoreset(self, mask: np.ndarray, infos: dict[str, Any]) -> dict[str, Any]:
        """The one autoreset path (NEXT_STEP before a step, SAME_STEP after it): reset the masked
        envs with the default image and prompt, a seed from the env's RNG and the no-op action;
        their reset info is added to ``infos``."""
        b, first_frames = self.num_envs, self.generator.first_chunk_frames
        zeros_kb = np.zeros((b, first_frames, self.keyboard_dim), np.float32)
        zeros_ms = np.zeros((b, first_frames, 2), np.float32)
        images, prompts = [self.default_image] * b, [self.default_prompt] * b
        outputs = self._reset_envs(mask, images, prompts, self._seeds(None, mask), zeros_kb, zeros_ms)
        for i, out in enumerate(outputs):
            if out is not None:
                infos = self._add_info(infos, self._reset_info(i, out, zeros_kb[i], zeros_ms[i]), i)
        return infos

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Run a step or reset so that, if it raises, every env is exactly as before the call."""
        groups = [(g, _snapshot(g.state)) for g in self._groups]
        env_state = (
            list(self._obs),
            [list(f) for f in self._unrendered],
            list(self._prompts),
            self._done.copy(),
            self._started,
            self._np_random,
            None if self._np_random is None else self._np_random.bit_generator.state,
            self._np_random_seed,
        )
        try:
            yield
        except BaseException as e:
            for g, snap in groups:
                g.state = _restore(snap)
            (self._obs, self._unrendered, self._prompts, self._done, self._started) = env_state[:5]
            rng, rng_state, self._np_random_seed = env_state[5:]
            if rng is not None:
                rng.bit_generator.state = rng_state
            self._np_random = rng
            if hasattr(e, "add_note"):
                e.add_note("mg3: the call was undone; every env is as it was before it (calling again repeats it)")
            raise

    def _reset_envs(
        self,
        mask: np.ndarray,
        images: list[np.ndarray],
        prompts: list[str],
        seeds: list[int],
        kb: np.ndarray,
        ms: np.ndarray,
    ) -> list[ChunkOutput | None]:
        """Reset the masked envs and generate their first chunk; updates the latest observations."""
        idx = np.flatnonzero(mask).tolist()
        if not idx:
            return [None] * self.num_envs
        pix = np.stack([images[i] for i in idx])  # [n, H, W, 3] uint8
        video = torch.from_numpy(pix).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, H, W] in [-1, 1]
        text = self.model.encode_prompts([prompts[i] for i in idx])  # [n, L, D], here: one encoder for all
        row = {i: j for j, i in enumerate(idx)}
        for i in idx:
            self._prompts[i] = prompts[i]
        actions = [
            ChunkActions(torch.from_numpy(kb[i]), torch.from_numpy(ms[i])) if mask[i] else None
            for i in range(self.num_envs)
        ]

        def reset_group(g: _DeviceGroup) -> None:
            rows = [row[i] for i in g.envs if mask[i]]
            if rows:
                g.generator.reset_(
                    g.state,
                    mask[g.envs.start : g.envs.stop].tolist(),
                    video[rows],
                    text[rows],
                    [seeds[i] for i in g.envs if mask[i]],
                )

        outputs = self._generate(actions, before=reset_group)
        for i in idx:
            self._set_obs(i, outputs[i])
        return outputs

    @staticmethod
    def _build_groups(
        num_envs: int, model: str | WorldModel, runtime: RuntimeOptions | None, devices: Any
    ) -> list[_DeviceGroup]:
        """Load the model once (on the first device), copy it to each other device, one group per entry."""
        if isinstance(model, WorldModel) and runtime is not None:
            raise ValueError(
                "runtime applies to a model the env loads by name or folder; a loaded WorldModel runs with its own "
                "(model.runtime): load it with this runtime instead"
            )
        if devices is None:
            if not isinstance(model, WorldModel):
                model = load_world_model(model, runtime)
            devs: tuple[torch.device, ...] = (checked_device(model.runtime.device),)  # "cuda" -> "cuda:<current>"
        else:
            devs = resolve_devices(devices, num_envs)
            if not isinstance(model, WorldModel):
                runtime = RuntimeOptions.for_device(str(devs[0])) if runtime is None else runtime
                model = load_world_model(model, replace(runtime, device=str(devs[0])))
        replicas: dict[torch.device, WorldModel] = {}
        groups = []
        for dev, envs in zip(devs, split_envs(num_envs, len(devs))):
            if dev not in replicas:
                replicas[dev] = model if _is_on(model, dev) else model.replicate(dev)
                if model.config.sampler.guidance_scale > 1.0:  # the generator's negative prompt, encoded
                    replicas[dev].encode_prompts([model.config.sampler.negative_prompt])  # here, not in threads
            gen = StreamingGenerator(replicas[dev])
            groups.append(_DeviceGroup(dev, envs, gen, gen.init_state(len(envs))))
        return groups

    def _generate(
        self, actions: list[ChunkActions | None], before: Callable[[_DeviceGroup], None] | None = None
    ) -> list[ChunkOutput | None]:
        """Advance the envs that have an action by one chunk (after ``before(group)``, e.g. a reset),
        each device group in its own thread; outputs in env order."""

        def run(g: _DeviceGroup) -> list[ChunkOutput | None]:
            if before is not None:
                before(g)
            outputs, g.state = g.generator.step(g.state, actions[g.envs.start : g.envs.stop])  # type: ignore[arg-type]
            return outputs

        busy = [g for g in self._groups if any(actions[i] is not None for i in g.envs)]
        outputs: list[ChunkOutput | None] = [None] * self.num_envs
        for g, outs in zip(busy, self._map_groups(run, busy)):
            outputs[g.envs.start : g.envs.stop] = outs
        return outputs

    def _map_groups(self, fn: Callable[[_DeviceGroup], _R], groups: list[_DeviceGroup]) -> list[_R]:
        """``fn(g)`` for each group, concurrently when there are several; the first error is raised
        after every group has finished (so no state is still being written)."""
        if self._pool is None or len(groups) < 2:
            return [_on_device(g.device, fn, g) for g in groups]
        futures = [self._pool.submit(_on_device, g.device, fn, g) for g in groups]
        try:
            wait(futures)
        except BaseException:  # e.g. Ctrl-C: the groups already running still write their state; the undo that
            for f in futures:  # follows must come after them (it used to restore the state under them)
                f.cancel()
            wait(futures)
            raise
        return [f.result() for f in futures]

    def _set_obs(self, i: int, out: ChunkOutput) -> dict[str, np.ndarray]:
        """Env i's latest observation from its chunk; in ``rgb_array_list`` mode keep every frame."""
        obs = self._obs[i] = self._chunk_obs(out)
        if self.render_mode == "rgb_array_list":
            self._unrendered[i].extend(out.frames.numpy())
        return obs

    def _chunk_obs(self, out: ChunkOutput) -> dict[str, np.ndarray]:
        t = self.frames_per_chunk  # the first chunk is longer: keep its last t frames
        return {
            "frames": out.frames[-t:].numpy(),
            "c2w": out.c2w[-t:].numpy().astype(np.float32),
            "pose": out.poses[-t:].numpy().astype(np.float32),
            "chunk_index": np.array([out.chunk_index], dtype=np.int64),
        }

    def _chunk_info(self, i: int, out: ChunkOutput) -> dict[str, Any]:
        m = self.model.config.stream.num_memory
        mem = np.full(m, -1, dtype=np.int64)
        mem[: out.memory_latents.numel()] = out.memory_latents.numpy()
        return {
            "chunk_index": int(out.chunk_index),
            "frame_start": int(out.frame_start + out.frames.shape[0] - self.frames_per_chunk),
            "memory_latents": mem,
            "pose_source": "commanded",
            "prompt": self._prompts[i],
            "seed": int(self._seed_of(i)),
            "model": self.model.name,
            "random_weights": bool(self.model.random_weights),
        }

    def _seed_of(self, i: int) -> int:
        g = next(g for g in self._groups if i in g.envs)
        return g.state.seeds[i - g.envs.start]  # type: ignore[union-attr]

    def _reset_info(self, i: int, out: ChunkOutput, kb: np.ndarray, ms: np.ndarray) -> dict[str, Any]:
        info = self._chunk_info(i, out)
        info.update(
            first_chunk_frames=out.frames.numpy(),
            first_chunk_pose=out.poses.numpy().astype(np.float32),
            first_chunk_c2w=out.c2w.numpy().astype(np.float32),
            first_chunk_keyboard=kb,
            first_chunk_mouse=ms,
        )
        return info

    def _batched_obs(self) -> dict[str, np.ndarray]:
        """The envs' observations stacked; one env's as views (each chunk's arrays are new and never
        written again, and a 704x1280 chunk's 108 MB copy costs tens of ms)."""
        keys, obs = self.single_observation_space.spaces, self._obs
        if len(obs) == 1:
            return {key: obs[0][key][None] for key in keys}  # type: ignore[index]
        return {key: np.stack([o[key] for o in obs]) for key in keys}  # type: ignore[index]

    def _reset_mask(self, mask: Any) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        arr = np.asarray(mask)
        if arr.dtype != np.bool_ or arr.shape != (self.num_envs,):
            raise ValueError(
                f"reset_mask must be a bool array of shape ({self.num_envs},), got {arr.dtype} {arr.shape}"
            )
        if not self._started and not arr.all():
            raise RuntimeError("the first reset must reset every env; pass no reset_mask")
        return arr

    def _seeds(self, seed: Any, mask: np.ndarray) -> list[int]:
        """One seed per env (entries of unmasked envs are unused)."""
        if seed is None:
            if self._np_random is None:
                self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(None)
            return [int(s) for s in self._np_random.integers(0, 2**31 - 1, self.num_envs)]
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        elif (
            isinstance(seed, Sequence)
            and len(seed) == self.num_envs
            and all(s is None or (isinstance(s, (int, np.integer)) and not isinstance(s, bool)) for s in seed)
        ):
            if any(s is None for s in seed):  # those envs draw theirs from the env's RNG (Gymnasium's list[int | None])
                drawn = self._seeds(None, mask)
                seed = [d if s is None else s for s, d in zip(seed, drawn)]
            seeds = [int(s) for s in seed]
        else:
            raise ValueError(f"seed must be None, an int or a list of {self.num_envs} ints (None: drawn), got {seed!r}")
        bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
        if bad:
            what = (
                f"seed {int(seed)} gives env seeds seed + i up to {seeds[-1]}"
                if not isinstance(seed, Sequence)
                else f"seeds {bad}"
            )
            raise ValueError(f"{what}; seeds must lie in [0, 2**63 - 1] (stored as int64); nothing was reset")
        self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(seeds[0])
        return seeds

    def _per_env(self, value: Any, name: str, mask: np.ndarray, default: Any) -> list[Any]:
        """One value for all envs, or a list/tuple of one per env; None -> the default."""
        if value is None:
            return [default] * self.num_envs
        if isinstance(value, (list, tuple)):
            if len(value) != self.num_envs:
                raise ValueError(
                    f"options[{name!r}] as a list must have one entry per env ({self.num_envs}), got {len(value)}"
                )
            return [default if v is None else v for v in value]
        return [value] * self.num_envs

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this env is closed; create a new one")

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("call reset() before step() or render()")

    def __repr__(self) -> str:
        devices = [str(d) for d in self.devices]
        return f"MatrixGameVectorEnv(model={self.model.name!r}, num_envs={self.num_envs}, devices={devices})"


def _reward(value: Any) -> float:
    """A reward_fn's return value as a float; anything but a finite real number raises, naming reward_fn."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d NumPy array or torch tensor
        value = value.item()
    if isinstance(value, np.bool_):
        value = bool(value)
    if not isinstance(value, Real) or not np.isfinite(value):  # a bool passes: 1.0 or 0.0
        raise ValueError(f"reward_fn returned {value!r}; expected a finite real number")
    return float(value)


def _is_on(model: WorldModel, device: torch.device) -> bool:
    own = torch.device(model.runtime.device)
    if own.type == "cuda" and own.index is None:
        own = torch.device("cuda", torch.cuda.current_device())
    return own == device


def _on_device(device: torch.device, fn: Callable[[_DeviceGroup], _R], group: _DeviceGroup) -> _R:
    """``fn(group)`` with ``device`` as the current CUDA device (kernels without an explicit device go there)."""
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return fn(group)


def _snapshot(state: StreamState | None) -> tuple[StreamState | None, dict[str, Any]]:
    """What a step or reset may change in ``state``: its lists (entries are replaced, never
    written in place), the decode cache (its tensors are replaced, never written in place: a
    shallow copy, see DecodeCache), the prompt embeddings (written in place: copied) and the noise
    generators' states."""
    if state is None:
        return None, {}
    saved = {
        "latents": list(state.latents),
        "poses": list(state.poses),
        "keyboard": list(state.keyboard),
        "mouse": list(state.mouse),
        "text": state.text.clone(),
        "rngs": list(state.rngs),
        "chunk": list(state.chunk),
        "decode_cache": state.decode_cache.copy(),
        "seeds": list(state.seeds),
        "memory_latents": list(state.memory_latents),
    }
    return state, {"fields": saved, "rng_states": [g.get_state() for g in state.rngs]}


def _restore(snapshot: tuple[StreamState | None, dict[str, Any]]) -> StreamState | None:
    state, saved = snapshot
    if state is None:
        return None
    for name, value in saved["fields"].items():
        setattr(state, name, value)
    for g, rng_state in zip(state.rngs, saved["rng_states"]):
        g.set_state(rng_state)
    return state
