"""Stable-Baselines3 adapter: a Gymnasium vector env as an SB3 ``VecEnv``.

SB3 expects same-step autoreset: when an episode ends, ``step`` returns the first observation of
the next episode and puts the last one in ``infos[i]["terminal_observation"]``. The adapter needs
the vector env in ``AutoresetMode.SAME_STEP`` (``MatrixGameVectorEnv(..., autoreset_mode="SameStep")``)
and converts its ``final_obs``; truncations also set ``infos[i]["TimeLimit.truncated"]``. Every
other info of the vector env is passed on per env (Gymnasium's dict of arrays with ``_key`` masks
becomes SB3's list of dicts), so a vector env wrapped in Gymnasium's ``RecordEpisodeStatistics``
gives SB3 its ``infos[i]["episode"]`` statistics without ``VecMonitor``.

SB3 policies need simple spaces; wrap the env with :class:`~mg3_env.wrappers.rl.LatestFrame` and
:class:`~mg3_env.wrappers.rl.DiscreteActions` first (see ``agents/ppo.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("the SB3 adapter needs stable-baselines3: pip install 'mg3[rl]'") from e

__all__ = ["SB3VecEnv", "per_env_infos"]


def per_env_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's batched infos (arrays with ``_key`` masks, nested dicts) -> one dict per env
    holding the entries whose mask is set (all entries when a key has no mask)."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        if isinstance(value, dict):
            nested = per_env_infos(value, num_envs)
            for i in range(num_envs):
                if (mask is None and nested[i]) or (mask is not None and mask[i]):
                    out[i][key] = nested[i]
            continue
        for i in range(num_envs):
            if mask is None or mask[i]:
                item = value[i]
                out[i][key] = item.item() if isinstance(item, np.generic) else item
    return out


class SB3VecEnv(VecEnv):
    """Present a Gymnasium ``VectorEnv`` (same-step autoreset) to Stable-Baselines3."""

    def __init__(self, env: VectorEnv) -> None:
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a vector env with autoreset_mode SAME_STEP, got {mode}; "
                "create it with autoreset_mode='SameStep'"
            )
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.render_mode = env.render_mode
        self._actions: Any = None

    def reset(self):
        seed = None if self._seeds[0] is None else [int(s) for s in self._seeds]
        obs, infos = self.env.reset(seed=seed)
        self.reset_infos = per_env_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.env.step(self._actions)
        dones = terminated | truncated
        out = per_env_infos(infos, self.num_envs)
        for i in range(self.num_envs):
            out[i].pop("final_obs", None)
            out[i].pop("final_info", None)
            if dones[i]:
                out[i]["terminal_observation"] = infos["final_obs"][i]
                out[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.env, method_name)(*method_args, **method_kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))
