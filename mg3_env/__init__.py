"""mg3_env: Matrix-Game 3.0 as Gymnasium environments.

Importing this package registers ``mg3/MatrixGame-v0`` for ``gymnasium.make`` (a
:class:`MatrixGameEnv`) and ``gymnasium.make_vec`` (a :class:`MatrixGameVectorEnv`, one batch on
one device), and ``mg3/MatrixGamePixels-v0``: the same envs seen through
:class:`~mg3_env.wrappers.rl.LatestFrame` and :class:`~mg3_env.wrappers.rl.DiscreteActions`
(``Box(0, 255, (H, W, 3), uint8)`` observation, ``Discrete`` action; one step = one chunk).
"""

from __future__ import annotations

from typing import Any

import gymnasium

__all__ = ["MatrixGameEnv", "MatrixGameVectorEnv", "ENV_ID", "PIXELS_ENV_ID"]

ENV_ID = "mg3/MatrixGame-v0"
PIXELS_ENV_ID = "mg3/MatrixGamePixels-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="mg3_env.env:MatrixGameEnv",
        vector_entry_point="mg3_env.vector:MatrixGameVectorEnv",
    )
if PIXELS_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=PIXELS_ENV_ID,
        entry_point="mg3_env.wrappers.rl:make_pixels_env",
        vector_entry_point="mg3_env.wrappers.rl:make_pixels_vector_env",
    )


def __getattr__(name: str) -> Any:  # the env classes import torch; load them on first use
    if name == "MatrixGameEnv":
        from mg3_env.env import MatrixGameEnv

        return MatrixGameEnv
    if name == "MatrixGameVectorEnv":
        from mg3_env.vector import MatrixGameVectorEnv

        return MatrixGameVectorEnv
    raise AttributeError(f"module 'mg3_env' has no attribute {name!r}")
