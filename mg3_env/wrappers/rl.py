"""RL-friendly views of the Matrix-Game envs for standard algorithms, for one env and for many.

``LatestFrame`` turns the chunk observation into the chunk's latest frame (uint8 [H, W, 3], the
image a CNN policy expects); ``DiscreteActions`` turns ``Discrete(n)`` into the release's
single-key actions (one per chunk). Each is one definition that wraps either a single
``gymnasium.Env`` (:class:`~mg3_env.env.MatrixGameEnv`) or a ``gymnasium.vector.VectorEnv``
(:class:`~mg3_env.vector.MatrixGameVectorEnv`): ``LatestFrame(env)`` picks the form that fits
``env`` (``isinstance(w, LatestFrame)`` holds for both). On a vector env they also convert
``final_obs`` of the ``SAME_STEP`` autoreset mode.

``mg3/MatrixGamePixels-v0`` (registered by importing :mod:`mg3_env`) is the Matrix-Game env with
both views applied: ``Box(0, 255, (H, W, 3), uint8)`` observations and ``Discrete(11)`` actions
over :data:`ACTION_VOCABULARY`, so ``gymnasium.make``, SB3's ``make_vec_env`` with ``CnnPolicy``
and cleanrl-style scripts run on it as they do on Atari.

Time scale: one step = one chunk of video. The action is held for the whole chunk (40 frames for
the release, 57 for the chunk ``reset`` generates), and the observation is the chunk's last frame:
the same convention as Atari's frame skip (ALE ``frameskip=4``: one action repeated over 4
emulator frames, the last one observed), with a skip of 40. Do not add a frame-skip wrapper on
top; ``render_mode="rgb_array_list"`` gives every frame for videos.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

__all__ = [
    "LatestFrame",
    "DiscreteActions",
    "ACTION_VOCABULARY",
    "KEYS_TO_ACTION",
    "PIXELS_ENV_ID",
    "make_pixels_env",
    "make_pixels_vector_env",
]

PIXELS_ENV_ID = "mg3/MatrixGamePixels-v0"

# name -> (keyboard multi-hot [W, S, A, D, -, -], mouse (pitch, yaw)); mouse at the release's 0.1.
ACTION_VOCABULARY: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {
    "noop": ((0, 0, 0, 0, 0, 0), (0.0, 0.0)),
    "forward": ((1, 0, 0, 0, 0, 0), (0.0, 0.0)),
    "back": ((0, 1, 0, 0, 0, 0), (0.0, 0.0)),
    "left": ((0, 0, 1, 0, 0, 0), (0.0, 0.0)),
    "right": ((0, 0, 0, 1, 0, 0), (0.0, 0.0)),
    "turn_left": ((0, 0, 0, 0, 0, 0), (0.0, -0.1)),
    "turn_right": ((0, 0, 0, 0, 0, 0), (0.0, 0.1)),
    "look_up": ((0, 0, 0, 0, 0, 0), (0.1, 0.0)),
    "look_down": ((0, 0, 0, 0, 0, 0), (-0.1, 0.0)),
    "forward_turn_left": ((1, 0, 0, 0, 0, 0), (0.0, -0.1)),
    "forward_turn_right": ((1, 0, 0, 0, 0, 0), (0.0, 0.1)),
}

# keys (as ``gymnasium.utils.play`` takes them: sorted tuples of characters) -> vocabulary name
KEYS_TO_ACTION: dict[tuple[str, ...], str] = {
    ("w",): "forward",
    ("s",): "back",
    ("a",): "left",
    ("d",): "right",
    ("q",): "turn_left",
    ("e",): "turn_right",
    ("r",): "look_up",
    ("f",): "look_down",
    ("q", "w"): "forward_turn_left",
    ("e", "w"): "forward_turn_right",
}


def _latest(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The chunk's last frame: frames [..., T, H, W, 3] -> [..., H, W, 3]."""
    return obs["frames"][..., -1, :, :, :]


def _frame_space(env: Any) -> spaces.Box:
    frames = env.single_observation_space["frames"] if isinstance(env, VectorEnv) else env.observation_space["frames"]
    return spaces.Box(0, 255, frames.shape[1:], np.uint8)


def _env_arg(args: tuple, kwargs: dict) -> Any:
    """The env a view is made over: its first argument (or ``env=``)."""
    if not args and "env" not in kwargs:
        raise TypeError("expected the env to wrap as the first argument")
    return args[0] if args else kwargs["env"]


class LatestFrame:
    """Observation = the chunk's latest frame, uint8 [H, W, 3] (a vector env: [B, H, W, 3]).

    ``LatestFrame(env)`` works on a single env and on a vector env (every autoreset mode).
    """

    def __new__(cls, *args: Any, **kwargs: Any):  # no env: pickle and copy make the subclass itself
        if cls is LatestFrame:
            cls = _VectorLatestFrame if isinstance(_env_arg(args, kwargs), VectorEnv) else _EnvLatestFrame
        return object.__new__(cls)


class _EnvLatestFrame(LatestFrame, gymnasium.ObservationWrapper):
    def __init__(self, env: gymnasium.Env) -> None:
        gymnasium.ObservationWrapper.__init__(self, env)
        self.observation_space = _frame_space(env)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return _latest(observation)


class _VectorLatestFrame(LatestFrame, VectorWrapper):
    def __init__(self, env: VectorEnv) -> None:
        VectorWrapper.__init__(self, env)
        self.single_observation_space = _frame_space(env)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return _latest(obs), infos

    def step(self, actions: Any):
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        if "final_obs" in infos:
            infos = dict(infos)
            final = np.empty(self.num_envs, dtype=object)  # one entry per env (None if not done)
            for i, o in enumerate(infos["final_obs"]):
                final[i] = None if o is None else _latest(o)
            infos["final_obs"] = final
        return _latest(obs), rewards, terminated, truncated, infos


class _Vocabulary:
    """Index -> (keyboard, mouse) over chosen names of :data:`ACTION_VOCABULARY`."""

    def __init__(self, names: tuple[str, ...] | None) -> None:
        names = tuple(ACTION_VOCABULARY) if names is None else tuple(names)
        unknown = [n for n in names if n not in ACTION_VOCABULARY]
        if unknown or not names:
            raise ValueError(f"unknown action names {unknown}; known: {list(ACTION_VOCABULARY)}")
        self.names = names
        self.keyboard = np.array([ACTION_VOCABULARY[n][0] for n in names], np.int8)  # [n, 6]
        self.mouse = np.array([ACTION_VOCABULARY[n][1] for n in names], np.float32)  # [n, 2]

    def lookup(self, actions: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        a = np.asarray(actions)
        if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
            want = "one integer action index" if shape == () else f"{shape[0]} integer action indices"
            raise ValueError(f"expected {want} in [0, {len(self.names)}), got {a.dtype} {a.shape}")
        if (a < 0).any() or (a >= len(self.names)).any():
            raise ValueError(f"action indices must lie in [0, {len(self.names)}), got {a.tolist()}")
        return {"keyboard": self.keyboard[a], "mouse": self.mouse[a]}

    def keys_to_action(self) -> dict[tuple[str, ...], int]:
        out = {keys: self.names.index(name) for keys, name in KEYS_TO_ACTION.items() if name in self.names}
        return out


class DiscreteActions:
    """Action = an index into ``names`` (default: all of :data:`ACTION_VOCABULARY`, index 0 = noop).

    ``DiscreteActions(env)`` works on a single env (one int) and on a vector env (one per env).
    ``get_keys_to_action()`` maps keys for ``gymnasium.utils.play``: W/S/A/D move, Q/E turn,
    R/F look up/down, W+Q and W+E walk while turning.
    """

    names: tuple[str, ...]

    def __new__(cls, *args: Any, **kwargs: Any):  # no env: pickle and copy make the subclass itself
        if cls is DiscreteActions:
            cls = _VectorDiscreteActions if isinstance(_env_arg(args, kwargs), VectorEnv) else _EnvDiscreteActions
        return object.__new__(cls)

    def get_keys_to_action(self) -> dict[tuple[str, ...], int]:
        return self._vocab.keys_to_action()


class _EnvDiscreteActions(DiscreteActions, gymnasium.ActionWrapper):
    def __init__(self, env: gymnasium.Env, names: tuple[str, ...] | None = None) -> None:
        gymnasium.ActionWrapper.__init__(self, env)
        self._vocab = _Vocabulary(names)
        self.names = self._vocab.names
        self.action_space = spaces.Discrete(len(self.names))

    def action(self, action: Any) -> dict[str, np.ndarray]:
        return self._vocab.lookup(action, ())


class _VectorDiscreteActions(DiscreteActions, gymnasium.vector.VectorActionWrapper):
    def __init__(self, env: VectorEnv, names: tuple[str, ...] | None = None) -> None:
        gymnasium.vector.VectorActionWrapper.__init__(self, env)
        self._vocab = _Vocabulary(names)
        self.names = self._vocab.names
        self.single_action_space = spaces.Discrete(len(self.names))
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    def actions(self, actions: Any) -> dict[str, np.ndarray]:
        return self._vocab.lookup(actions, (self.num_envs,))


def make_pixels_env(**kwargs: Any) -> gymnasium.Env:
    """``mg3/MatrixGamePixels-v0``: a :class:`~mg3_env.env.MatrixGameEnv` (same arguments) seen
    through :class:`LatestFrame` and :class:`DiscreteActions`."""
    from mg3_env.env import MatrixGameEnv

    return DiscreteActions(LatestFrame(MatrixGameEnv(**kwargs)))  # type: ignore[return-value]


def make_pixels_vector_env(num_envs: int = 1, **kwargs: Any) -> VectorEnv:
    """The vector form of ``mg3/MatrixGamePixels-v0`` (``gymnasium.make_vec``)."""
    from mg3_env.vector import MatrixGameVectorEnv

    return DiscreteActions(LatestFrame(MatrixGameVectorEnv(num_envs, **kwargs)))  # type: ignore[return-value]
