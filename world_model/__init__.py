"""Matrix-Game 3.0 world model: a clean, checkpoint-exact re-implementation."""

from world_model.config import (
    ActionConfig,
    ConfigError,
    DiTConfig,
    SamplerConfig,
    StreamConfig,
    TextConfig,
    VAEConfig,
    WorldModelConfig,
    mg3_5b,
    tiny,
)
from world_model.runtime import RuntimeOptions

__all__ = [
    "ActionConfig",
    "ConfigError",
    "DiTConfig",
    "SamplerConfig",
    "StreamConfig",
    "TextConfig",
    "VAEConfig",
    "WorldModelConfig",
    "RuntimeOptions",
    "mg3_5b",
    "tiny",
]
