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

Videos: one SB3 step is one chunk (40 frames, 57 at reset), and SB3's ``VecVideoRecorder`` takes
one image per step. Over a vector env made with ``render_mode="rgb_array_list"`` the adapter keeps
every frame of the last step (SB3 sees ``render_mode == "rgb_array"``: ``render()`` gives the
latest frames, tiled), and :class:`VecChunkVideoRecorder` -- ``VecVideoRecorder`` with the same
arguments -- writes them all, at the model's fps: videos that play in real time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

try:
    from stable_baselines3.common.vec_env import VecVideoRecorder
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvWrapper, tile_images
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("the SB3 adapter needs stable-baselines3: pip install 'mg3[rl]'") from e

__all__ = ["SB3VecEnv", "VecChunkVideoRecorder", "per_env_infos"]


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
        # every frame of the last step, per env (render_mode "rgb_array_list"; SB3 itself knows
        # only "rgb_array", which render() still is: the latest frames)
        self.keeps_chunks = env.render_mode == "rgb_array_list"
        self.render_mode = "rgb_array" if self.keeps_chunks else env.render_mode
        self.metadata = {"render_modes": [] if self.render_mode is None else [self.render_mode]}
        if "render_fps" in env.metadata:
            self.metadata["render_fps"] = env.metadata["render_fps"]
        self._chunks: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]
        self._actions: Any = None

    def reset(self):
        seed = None if self._seeds[0] is None else [int(s) for s in self._seeds]
        obs, infos = self.env.reset(seed=seed, options=self._batched_options())
        self._keep_chunks()
        self.reset_infos = per_env_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def _batched_options(self) -> dict[str, list[Any]] | None:
        """SB3's per-env reset options (``set_options``) as the vector env takes them: each key's values in env
        order (``{"prompt": [p0, p1, ...]}``); None where no env has any."""
        options = self._options
        if not any(options):
            return None
        keys = set().union(*options)
        if any(set(o) != keys for o in options):
            raise ValueError(
                "set_options: the envs reset together and need the same option keys, "
                f"got {[sorted(o) for o in options]}"
            )
        return {k: [o[k] for o in options] for k in sorted(keys)}

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.env.step(self._actions)
        self._keep_chunks()
        dones = terminated | truncated
        out = per_env_infos(infos, self.num_envs)
        final = per_env_infos(infos["final_info"], self.num_envs) if dones.any() else []
        for i in range(self.num_envs):
            out[i].pop("final_obs", None)
            out[i].pop("final_info", None)
            if dones[i]:
                # as SB3's own VecEnvs: the new episode's reset info in reset_infos, and in the step's info the
                # finished episode's last step (over what wrappers added, e.g. "episode"; the reset's own
                # first_chunk_* entries left out) beside its terminal observation
                self.reset_infos[i] = dict(out[i])
                kept = {k: v for k, v in out[i].items() if not k.startswith("first_chunk_")}
                out[i] = {**kept, **final[i], "terminal_observation": infos["final_obs"][i]}
                out[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.keeps_chunks:
            return [frames[-1] if frames else None for frames in self._chunks]
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def chunk_images(self) -> list[np.ndarray]:
        """Every frame of the last step (or reset), the envs tiled as SB3's ``render()`` tiles them;
        an env with fewer frames (they differ where an env autoreset: its last chunk plus the next
        episode's first) holds its last frame. Needs a vector env made with ``render_mode="rgb_array_list"``."""
        if not self.keeps_chunks:
            raise ValueError("chunk_images() needs a vector env made with render_mode='rgb_array_list'")
        n = max(len(frames) for frames in self._chunks)
        return [tile_images([frames[min(t, len(frames) - 1)] for frames in self._chunks]) for t in range(n)]

    def _keep_chunks(self) -> None:
        if self.keeps_chunks:
            self._chunks = [list(frames) for frames in self.env.render()]

    # The envs are one vector env: an attribute or a method is the batch's, read or called once for all of them.
    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self._all_envs(indices, "set_attr")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        self._all_envs(indices, "env_method")
        return [getattr(self.env, method_name)(*method_args, **method_kwargs)] * self.num_envs

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        env, wrapped = self.env, False
        while env is not None and not wrapped:
            wrapped = isinstance(env, wrapper_class)
            env = getattr(env, "env", None)
        return [wrapped] * len(self._get_indices(indices))

    def _all_envs(self, indices, what: str) -> None:
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"{what}: the envs are one vector env, whose attributes and methods are the batch's; "
                f"indices must name all {self.num_envs} envs (or be None), got {indices!r}"
            )


class VecChunkVideoRecorder(VecVideoRecorder):
    """SB3's ``VecVideoRecorder`` (same arguments) writing every frame of each step, not one: a
    step's 40 frames (57 at reset) per env, tiled, at the model's fps. ``video_length`` counts
    frames, as in ``VecVideoRecorder``. The env below the wrappers must be an :class:`SB3VecEnv`
    over a vector env made with ``render_mode="rgb_array_list"``
    (``agents.ppo.make_sb3_env(..., render_mode="rgb_array_list")``)."""

    def __init__(self, venv: VecEnv, *args: Any, **kwargs: Any) -> None:
        self.recorded_frames: list[np.ndarray] = []  # read by SB3's __del__, also when this raises
        source = venv
        while isinstance(source, VecEnvWrapper):
            source = source.venv
        if not (isinstance(source, SB3VecEnv) and source.keeps_chunks):
            raise ValueError(
                "VecChunkVideoRecorder needs an SB3VecEnv over a vector env made with render_mode='rgb_array_list' "
                "(agents.ppo.make_sb3_env(..., render_mode='rgb_array_list'))"
            )
        super().__init__(venv, *args, **kwargs)
        self._source = source

    def _capture_frame(self) -> None:
        assert self.recording, "Cannot capture a frame, recording wasn't started."
        self.recorded_frames.extend(self._source.chunk_images())
