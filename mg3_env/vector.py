"""MatrixGameVectorEnv: B world-model rollouts stepped together on one device.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

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
from world_model.generator import ChunkActions, ChunkOutput, StreamingGenerator
from world_model.model import WorldModel, load_world_model
from world_model.runtime import RuntimeOptions

__all__ = ["MatrixGameVectorEnv", "DEFAULT_PROMPT", "default_image_path"]

DEFAULT_PROMPT = "A sunny suburban street with colourful houses and trees, seen in first person."
_RESET_OPTIONS = ("image", "prompt", "action", "reset_mask")


def default_image_path() -> str:
    """The packaged default first frame (a procedurally drawn street scene)."""
    return str(resources.files("world_model") / "assets" / "default_image.png")


class MatrixGameVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` Matrix-Game rollouts generated as one batch.

    Args:
        num_envs: envs in the batch.
        model: a registry name or path (see :func:`world_model.model.load_world_model`) or a
            loaded :class:`~world_model.model.WorldModel` (share one between envs).
        runtime: device/dtype options when ``model`` is a name.
        image, prompt: the default first frame and prompt (used when ``reset`` gets none, and by
            autoreset); image as an H x W x 3 uint8 array, a PIL image or a path.
        reward_fn: ``reward_fn(obs, action, info) -> float`` per env and step (default 0).
        max_chunks: steps per episode before truncation.
        render_mode: None or ``"rgb_array"`` (``render()`` gives each env's latest frame).
        autoreset_mode: a :class:`gymnasium.vector.AutoresetMode`.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP, "render_fps": 16}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        model: str | WorldModel = "tiny-random",
        runtime: RuntimeOptions | None = None,
        image: Any = None,
        prompt: str | None = None,
        reward_fn: RewardFn = zero_reward,
        max_chunks: int = 50,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.model = model if isinstance(model, WorldModel) else load_world_model(model, runtime)
        self.generator = StreamingGenerator(self.model)
        cfg = self.model.config
        capacity = (cfg.dit.rope_max_len - cfg.stream.first_latents) // cfg.stream.new_latents
        if not isinstance(max_chunks, (int, np.integer)) or not 1 <= max_chunks <= capacity:
            raise ValueError(
                f"max_chunks must be an int in [1, {capacity}] (the model's RoPE table holds "
                f"{cfg.dit.rope_max_len} latents), got {max_chunks!r}"
            )
        self.num_envs = int(num_envs)
        self.max_chunks = int(max_chunks)
        self.reward_fn = reward_fn
        self.render_mode = render_mode
        self.autoreset_mode = AutoresetMode(autoreset_mode)
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

        self.default_image = load_image(default_image_path() if image is None else image, s.height, s.width)
        self.default_prompt = validate_prompt(DEFAULT_PROMPT if prompt is None else prompt, cfg.text.max_prompt_chars)

        self._state = self.generator.init_state(self.num_envs)
        self._obs: list[dict[str, np.ndarray] | None] = [None] * self.num_envs
        self._prompts = [self.default_prompt] * self.num_envs
        self._done = np.zeros(self.num_envs, dtype=bool)  # episode ended at the last step
        self._started = False
        self.closed = False

    # ---- Gymnasium API -----------------------------------------------------------------------

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all envs (or ``options["reset_mask"]``) and generate their first chunk.

        ``seed``: an int (env i gets seed + i), a list of one per env, or None (drawn from the
        env's own RNG). ``options``: ``image`` and ``prompt`` (one for all, or a list of one per
        env), ``action`` for the first chunk (batched like ``step``'s; default no-op),
        ``reset_mask`` ([B] bools).
        """
        self._check_open()
        options = dict(options or {})
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
        return self._step_arrays(kb, ms)

    def render(self) -> tuple[np.ndarray, ...] | None:
        """Each env's latest frame (uint8 [H, W, 3]) in ``rgb_array`` mode, else None."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without render_mode='rgb_array'; returning None")
            return None
        self._check_started()
        return tuple(obs["frames"][-1] for obs in self._obs)  # type: ignore[index]

    def close_extras(self, **kwargs: Any) -> None:
        self._state = None  # type: ignore[assignment]
        self._obs = [None] * self.num_envs

    # ---- internals ---------------------------------------------------------------------------

    def _step_arrays(self, kb: np.ndarray, ms: np.ndarray):
        """Step with validated per-frame actions keyboard [B, T, K], mouse [B, T, 2]."""
        b = self.num_envs
        rewards = np.zeros(b, dtype=np.float64)
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        infos: dict[str, Any] = {}
        autoreset = self._done.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros(b, bool)
        if self.autoreset_mode == AutoresetMode.DISABLED and self._done.any():
            raise RuntimeError(
                f"envs {np.flatnonzero(self._done).tolist()} are done (autoreset disabled); reset them with "
                "reset(options={'reset_mask': mask}) before stepping"
            )
        if autoreset.any():  # NEXT_STEP: these envs reset now; their actions are ignored
            first_frames = self.generator.first_chunk_frames
            zeros_kb = np.zeros((b, first_frames, self.keyboard_dim), np.float32)
            zeros_ms = np.zeros((b, first_frames, 2), np.float32)
            images = [self.default_image] * b
            prompts = [self.default_prompt] * b
            seeds = self._seeds(None, autoreset)
            for i, out in enumerate(self._reset_envs(autoreset, images, prompts, seeds, zeros_kb, zeros_ms)):
                if out is not None:
                    infos = self._add_info(infos, self._reset_info(i, out, zeros_kb[i], zeros_ms[i]), i)
        chunk_actions = [
            None if autoreset[i] else ChunkActions(torch.from_numpy(kb[i]), torch.from_numpy(ms[i])) for i in range(b)
        ]
        outputs, self._state = self.generator.step(self._state, chunk_actions)
        for i, out in enumerate(outputs):
            if out is None:
                continue
            obs = self._chunk_obs(out)
            self._obs[i] = obs
            info = self._chunk_info(i, out)
            info["keyboard"], info["mouse"] = kb[i], ms[i]
            rewards[i] = float(self.reward_fn(obs, {"keyboard": kb[i], "mouse": ms[i]}, info))
            truncated[i] = out.chunk_index >= self.max_chunks
            infos = self._add_info(infos, info, i)
        self._done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and self._done.any():
            final_obs = [self._obs[i] for i in range(b)]
            final_infos = dict(infos)
            done = self._done.copy()
            images, prompts = [self.default_image] * b, [self.default_prompt] * b
            first_frames = self.generator.first_chunk_frames
            zeros_kb = np.zeros((b, first_frames, self.keyboard_dim), np.float32)
            zeros_ms = np.zeros((b, first_frames, 2), np.float32)
            self._reset_envs(done, images, prompts, self._seeds(None, done), zeros_kb, zeros_ms)
            infos["final_obs"] = np.empty(b, dtype=object)
            for i in np.flatnonzero(done):
                infos["final_obs"][i] = final_obs[i]
            infos["_final_obs"] = done
            infos["final_info"] = final_infos
            infos["_final_info"] = done
            self._done[:] = False
        return self._batched_obs(), rewards, terminated, truncated, infos

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
        text = self.model.encode_prompts([prompts[i] for i in idx])
        self.generator.reset_(self._state, mask.tolist(), video, text, [seeds[i] for i in idx])
        for i in idx:
            self._prompts[i] = prompts[i]
        actions = [
            ChunkActions(torch.from_numpy(kb[i]), torch.from_numpy(ms[i])) if mask[i] else None
            for i in range(self.num_envs)
        ]
        outputs, self._state = self.generator.step(self._state, actions)
        for i in idx:
            self._obs[i] = self._chunk_obs(outputs[i])
        return outputs

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
            "seed": int(self._state.seeds[i]),
            "model": self.model.name,
            "random_weights": bool(self.model.random_weights),
        }

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
        return {key: np.stack([obs[key] for obs in self._obs]) for key in self.single_observation_space.spaces}  # type: ignore[index]

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
            self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(int(seed))
            return [int(seed) + i for i in range(self.num_envs)]
        if (
            isinstance(seed, Sequence)
            and len(seed) == self.num_envs
            and all(isinstance(s, (int, np.integer)) for s in seed)
        ):
            self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(int(seed[0]))
            return [int(s) for s in seed]
        raise ValueError(f"seed must be None, an int or a list of {self.num_envs} ints, got {seed!r}")

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
        return f"MatrixGameVectorEnv(model={self.model.name!r}, num_envs={self.num_envs})"
