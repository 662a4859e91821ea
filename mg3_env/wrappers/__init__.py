"""Gymnasium wrappers: rollout recording and RL-friendly views of the Matrix-Game envs."""

from mg3_env.wrappers.record import RecordEpisodes, RecordingError, RecordVectorEpisodes
from mg3_env.wrappers.rl import DiscreteActions, LatestFrame
from mg3_env.wrappers.video import RecordChunkVideo

__all__ = [
    "RecordEpisodes",
    "RecordVectorEpisodes",
    "RecordingError",
    "RecordChunkVideo",
    "DiscreteActions",
    "LatestFrame",
]
