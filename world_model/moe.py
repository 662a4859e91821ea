"""Two DiT experts switched by timestep (mg3-28b-moe, Wan2.2-A14B style; spec §1.3).

:class:`MoEDiT` holds a high-noise and a low-noise :class:`~world_model.dit.MatrixGameDiT` and has
the single DiT's forward, so the streaming generator, the env and the sampling loop use it as they
use one DiT. Each call runs the expert that the step's timestep selects: the high-noise expert when
the timestep of the window's noisy frames is >= ``boundary_timestep`` (``boundary *
num_train_timesteps``, 900 for Wan2.2-A14B I2V's 0.900), else the low-noise expert. Context frames
carry timestep 0 and memory frames are not in ``t``, so the noisy frames' timestep is the largest
entry of a sample's row of ``t``. Samples of one batch at different timesteps are split between the
experts.

The timestep compared is the one the model sees, rounded through bf16 by the sampler (spec §13.3).
Wan2.2 compares the scheduler's integer timestep; the two rules pick the same expert at every step
of the 3- and 50-step schedules, and differ only where a step's integer timestep lies just below
the boundary and rounds onto it (899 -> 900, e.g. with 14 or 28 steps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from world_model.config import WorldModelConfig
from world_model.dit import MatrixGameDiT

__all__ = ["MoEDiT", "EXPERTS"]

EXPERTS = ("high_noise", "low_noise")


def _rows(x: Tensor | None, index: Tensor) -> Tensor | None:
    return None if x is None else x[index]


class MoEDiT(nn.Module):
    """A high-noise and a low-noise expert behind one DiT forward (see the module docstring).

    ``cfg`` is the high-noise expert's config (it carries the action module, so it defines the
    action inputs); state-dict keys are the experts' keys under ``high_noise.`` / ``low_noise.``.
    """

    def __init__(self, high_noise: MatrixGameDiT, low_noise: MatrixGameDiT, boundary_timestep: float) -> None:
        super().__init__()
        self.high_noise = high_noise
        self.low_noise = low_noise
        self.boundary_timestep = float(boundary_timestep)
        self.cfg = high_noise.cfg

    @classmethod
    def from_config(cls, config: WorldModelConfig) -> MoEDiT:
        """Both experts with training init (on the current default device; works on meta)."""
        if config.moe is None:
            raise ValueError(f"config {config.name!r} has no moe section; build a MatrixGameDiT instead")
        return cls(
            MatrixGameDiT(config.dit),
            MatrixGameDiT(config.moe.low_noise),
            config.moe.boundary * config.sampler.num_train_timesteps,
        )

    def uses_high_noise(self, t: Tensor) -> Tensor:
        """[B] bools from per-frame timesteps t [B, F]: True where the high-noise expert runs."""
        return t.amax(dim=1) >= self.boundary_timestep

    def set_self_attn_projection_dtype(self, dtype: torch.dtype | None) -> None:
        """See :meth:`MatrixGameDiT.set_self_attn_projection_dtype`; applies to both experts."""
        self.high_noise.set_self_attn_projection_dtype(dtype)
        self.low_noise.set_self_attn_projection_dtype(dtype)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        plucker: Tensor,
        mouse: Tensor | None,
        keyboard: Tensor | None,
        positions: Tensor,
        memory: Tensor | None = None,
    ) -> Tensor:
        """The arguments and result of :meth:`MatrixGameDiT.forward`; each sample goes to one expert."""
        if t.ndim != 2 or t.shape[0] != x.shape[0]:
            raise ValueError(f"expected t [B={x.shape[0]}, F] (one timestep per window frame), got {tuple(t.shape)}")
        high = self.uses_high_noise(t)  # [B]
        args = (x, t, context, plucker, mouse, keyboard, positions, memory)
        if bool(high.all()):
            return self.high_noise(*args)
        if not bool(high.any()):
            return self.low_noise(*args)
        out = None
        for expert, rows in ((self.high_noise, high), (self.low_noise, ~high)):
            index = rows.nonzero().squeeze(1)
            part = expert(*(_rows(a, index) for a in args))  # [b, C, F, h, w]
            if out is None:
                out = part.new_empty(x.shape[0], *part.shape[1:])
            out[index] = part
        return out
