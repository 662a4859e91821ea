"""Data engine and dataset format (LeRobot v3 layout). See ``world_model/data/README.md``.

Heavy optional dependencies (pyarrow, PyAV, ViZDoom) are imported where used.
"""

from world_model.data.clips import Clip, ClipSampler, ClipSpec
from world_model.data.format import DatasetError, DatasetReader, DatasetWriter, Episode, EpisodeInfo, validate_dataset

__all__ = [
    "Clip",
    "ClipSampler",
    "ClipSpec",
    "DatasetError",
    "DatasetReader",
    "DatasetWriter",
    "Episode",
    "EpisodeInfo",
    "validate_dataset",
]
