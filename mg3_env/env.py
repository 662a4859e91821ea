"""MatrixGameEnv: one world-model rollout as a ``gymnasium.Env``.

A batch-1 view of :class:`~mg3_env.vector.MatrixGameVectorEnv` (the same code path, not a second
one: ``reset`` and ``step`` call the vector env's public ``reset`` and ``step`` with a batch of one,
so they are all-or-nothing too): observations, actions, rewards and ``info`` are those of the vector env without the batch
axis. See :mod:`mg3_env.spaces` for units and the observation layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode

from mg3_env.rewards import RewardFn, zero_reward
from mg3_env.spaces import validate_action
from mg3_env.vector import MatrixGameVectorEnv
from world_model.model import WorldModel
from world_model.runtime import RuntimeOptions

__all__ = ["MatrixGameEnv"]


class MatrixGameEnv(gymnasium.Env):
    """A Matrix-Game world model as a Gymnasium environment; arguments as for the vector env.

    ``reset(seed=, options={"image": ..., "prompt": ..., "action": ...})`` primes the model and
    returns the first chunk; ``step(action)`` generates the next chunk. ``render()`` returns the
    latest frame (``render_mode="rgb_array"``) or every frame generated since the last ``render()``
    (``"rgb_array_list"``: 57 after ``reset``, 40 per step), at ``metadata["render_fps"]``, the
    model's fps. Gymnasium's ``RecordVideo`` keeps one frame per step even from a list;
    :class:`~mg3_env.wrappers.video.RecordChunkVideo` (same arguments) keeps them all.
    """

    metadata = {"render_modes": ["rgb_array", "rgb_array_list"], "render_fps": 16}

    def __init__(
        self,
        *,
        model: str | WorldModel = "default",
        runtime: RuntimeOptions | None = None,
        image: Any = None,
        prompt: str | None = None,
        reward_fn: RewardFn = zero_reward,
        max_chunks: int = 50,
        render_mode: str | None = None,
    ) -> None:
        self.vector_env = MatrixGameVectorEnv(
            1,
            model=model,
            runtime=runtime,
            image=image,
            prompt=prompt,
            reward_fn=reward_fn,
            max_chunks=max_chunks,
            render_mode=render_mode,
            autoreset_mode=AutoresetMode.DISABLED,
        )
        v = self.vector_env
        self.action_space = v.single_action_space
        self.observation_space = v.single_observation_space
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "render_fps": v.metadata["render_fps"]}

    @property
    def model(self) -> WorldModel:
        return self.vector_env.model

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(
                f"options must be a dict like {{'image': ..., 'prompt': ...}}, got {type(options).__name__}"
            )
        options = dict(options or {})
        if "reset_mask" in options:
            raise ValueError("reset_mask is a vector-env option; a single env always resets")
        if options.get("action") is not None:
            n = self.vector_env.generator.first_chunk_frames
            kb, ms = validate_action(options["action"], n, self.vector_env.keyboard_dim)
            options["action"] = {"keyboard": kb[None], "mouse": ms[None]}
        if isinstance(options.get("image"), (list, tuple)) or isinstance(options.get("prompt"), (list, tuple)):
            raise TypeError("a single env takes one image and one prompt, not a list")
        if isinstance(seed, np.integer):
            seed = int(seed)
        if seed is not None and (type(seed) is not int or seed < 0):  # checked before anything resets
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
        obs, info = self.vector_env.reset(seed=seed, options=options)
        super().reset(seed=seed)  # only once the reset is done: a refused one leaves the env's seed as it was
        return _unbatch(obs), _unbatch_info(info)

    def step(self, action: Any):
        v = self.vector_env
        if v.closed:
            raise RuntimeError("this env is closed; create a new one")
        kb, ms = validate_action(action, v.frames_per_chunk, v.keyboard_dim)
        if v.needs_reset[0]:
            raise RuntimeError("the episode is over (truncated); call reset() before stepping again")
        obs, reward, terminated, truncated, info = v.step({"keyboard": kb[None], "mouse": ms[None]})
        return _unbatch(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), _unbatch_info(info)

    def render(self) -> np.ndarray | list[np.ndarray] | None:
        frames = self.vector_env.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self.vector_env.close()
        super().close()


def _unbatch(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in obs.items()}


def _unbatch_info(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        if k.startswith("_"):
            continue
        out[k] = _unbatch_info(v) if isinstance(v, dict) else (v[0].item() if isinstance(v[0], np.generic) else v[0])
    return out
