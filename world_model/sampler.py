"""Few-step flow-matching sampler: the multistep UniPC predictor-corrector (spec §6 step 2).

Flow matching convention: ``x_σ = (1 − σ)·x0 + σ·ε`` and the model predicts the velocity
``v = ε − x0``, so the clean estimate is ``x0 = x_σ − σ·v``. The sampler works in that
data-prediction form (UniPC "predict_x0") with the bh2 variant, order 2, a lower order on the
final step, and a final σ of 0 (the last step returns the model's clean estimate).

Usage (one chunk; a new :class:`UniPCState` per chunk)::

    sampler = FlowUniPCSampler.from_config(cfg.sampler)
    x, state = noise, sampler.init_state()
    for i, t in enumerate(sampler.model_timesteps()):
        v = model(x, t, ...)
        x, state = sampler.step(x, v, state)

Every update is elementwise with per-step scalar coefficients, so the sampler handles any batch
shape, and overwriting conditioning frames between steps does not affect the other frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import SamplerConfig

__all__ = ["FlowSchedule", "flow_schedule", "UniPCState", "FlowUniPCSampler", "cfg_combine"]


@dataclass(frozen=True)
class FlowSchedule:
    """Noise levels of one sampling run.

    ``sigmas``: [n + 1] float64, the shifted σ of each step followed by the final σ = 0.
    ``timesteps``: [n] int64, ``int(σ·num_train_timesteps)`` (truncation, as the release).
    """

    sigmas: Tensor
    timesteps: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())


def flow_schedule(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> FlowSchedule:
    """σ_i = linspace(σ_max, 0, n + 1)[:-1], shifted σ' = sσ / (1 + (s − 1)σ), then a trailing 0.

    σ_max is the largest training noise level, 1 − 1/num_train_timesteps (0.999 for 1000), taken
    as float32 like the release. n = 3, s = 5 gives σ = [0.99980, 0.90884, 0.71398, 0] and
    timesteps [999, 908, 713].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    sigma_max = float(torch.tensor(1.0 - 1.0 / num_train_timesteps, dtype=torch.float32))
    sigmas = torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
    timesteps = (sigmas * num_train_timesteps).to(torch.int64)
    return FlowSchedule(sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps=timesteps)


@dataclass(frozen=True)
class UniPCState:
    """Explicit sampler state for one sampling run (create a new one per chunk).

    ``step_index``: steps taken so far. ``x0_history``: clean estimates of the last
    ``solver_order`` steps, oldest first (tensors shaped like the sample). ``last_sample``: the
    sample the previous prediction was made from (needed by the corrector). ``last_order``: the
    order of the previous predictor step.
    """

    step_index: int = 0
    x0_history: tuple[Tensor, ...] = ()
    last_sample: Tensor | None = None
    last_order: int = 0


def _lambda(sigma: float) -> float:
    """Half log-SNR of the flow path: log(α) − log(σ) with α = 1 − σ (+inf at σ = 0)."""
    if sigma <= 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class FlowUniPCSampler:
    """UniPC (bh2, data prediction) for flow-matching velocity models; works on any batch."""

    def __init__(
        self,
        num_steps: int = 3,
        shift: float = 5.0,
        *,
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        lower_order_final: bool = True,
    ) -> None:
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        self.num_train_timesteps = num_train_timesteps
        self.solver_order = solver_order
        self.lower_order_final = lower_order_final
        self.schedule = flow_schedule(num_steps, shift, num_train_timesteps)

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> FlowUniPCSampler:
        return cls(cfg.num_steps, cfg.shift, num_train_timesteps=cfg.num_train_timesteps, solver_order=cfg.solver_order)

    def set_timesteps(self, num_steps: int, shift: float) -> FlowSchedule:
        """Replace the schedule (a state made for the old schedule must not be reused)."""
        self.schedule = flow_schedule(num_steps, shift, self.num_train_timesteps)
        return self.schedule

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def sigmas(self) -> Tensor:
        return self.schedule.sigmas

    @property
    def timesteps(self) -> Tensor:
        return self.schedule.timesteps

    def model_timesteps(self, dtype: torch.dtype = torch.bfloat16) -> Tensor:
        """[n] float32: the timesteps as the model sees them, rounded through ``dtype``.

        The release fills its timestep map in bf16, so 999 -> 1000 and 713 -> 712 (spec §13.3).
        """
        return self.schedule.timesteps.to(dtype).to(torch.float32)

    def init_state(self) -> UniPCState:
        return UniPCState()

    # ---- one step --------------------------------------------------------------------------

    def step(self, x: Tensor, v: Tensor, state: UniPCState) -> tuple[Tensor, UniPCState]:
        """Advance ``x`` (at σ_i, i = state.step_index) by one step given the velocity ``v``.

        Applies the corrector to ``x`` (using ``v``) when a previous step exists, then the
        predictor to σ_{i+1}. Returns the new sample (dtype of ``x``) and the new state; the
        last step returns the clean estimate. Arithmetic is float32 or wider.
        """
        n = self.num_steps
        i = state.step_index
        if i >= n:
            raise ValueError(f"all {n} steps are done; create a new state with init_state() for the next chunk")
        if x.shape != v.shape:
            raise ValueError(f"velocity shape {tuple(v.shape)} must equal sample shape {tuple(x.shape)}")
        out_dtype = x.dtype
        work = torch.promote_types(x.dtype, torch.float32)
        sigma = float(self.sigmas[i])
        xw = x.to(work)
        x0 = xw - sigma * v.to(work)  # [same shape as x] clean estimate at σ_i

        if i > 0 and state.last_sample is not None:
            xw = self._correct(state, x0, i)

        history = (*state.x0_history, x0)[-self.solver_order :]
        order = self.solver_order
        if self.lower_order_final:
            order = min(order, n - i)
        order = min(order, i + 1)  # warm-up: as many previous outputs as exist
        x_next = self._predict(xw, history, i, order)
        new_state = UniPCState(step_index=i + 1, x0_history=history, last_sample=xw, last_order=order)
        return x_next.to(out_dtype), new_state

    def _coefficients(self, lambdas: list[float], order: int) -> tuple[float, float, list[float], Tensor, Tensor]:
        """Shared UniPC (bh2) quantities for an update from lambdas[1] (s0) to lambdas[0] (t).

        ``lambdas`` = [λ_t, λ_s0, λ_s1, ...] with older steps last. Returns h_phi_1, B_h, the
        ratios r_k, the matrix R [order, order] and the vector b [order].
        """
        lam_t, lam_s0 = lambdas[0], lambdas[1]
        h = lam_t - lam_s0
        hh = -h  # data-prediction form
        h_phi_1 = math.expm1(hh)
        b_h = math.expm1(hh)  # bh2
        rks = [(lambdas[k + 1] - lam_s0) / h for k in range(1, order)] + [1.0]
        rk = torch.tensor(rks, dtype=torch.float64)
        rows, b = [], []
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1
        for k in range(1, order + 1):
            rows.append(rk ** (k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        return h_phi_1, b_h, rks, torch.stack(rows), torch.tensor(b, dtype=torch.float64)

    def _lambdas(self, t_index: int, s0_index: int, order: int) -> list[float]:
        return [_lambda(float(self.sigmas[t_index]))] + [
            _lambda(float(self.sigmas[s0_index - k])) for k in range(order)
        ]

    def _predict(self, x: Tensor, history: tuple[Tensor, ...], i: int, order: int) -> Tensor:
        """UniP: from x at σ_i to σ_{i+1} using the last ``order`` clean estimates."""
        sigma_s0, sigma_t = float(self.sigmas[i]), float(self.sigmas[i + 1])
        alpha_t = 1.0 - sigma_t
        m0 = history[-1]
        if sigma_t == 0.0:  # λ_t = +inf: every order reduces to the latest clean estimate
            return m0.clone()
        h_phi_1, b_h, rks, r_mat, b = self._coefficients(self._lambdas(i + 1, i, order), order)
        x_t = (sigma_t / sigma_s0) * x - (alpha_t * h_phi_1) * m0
        if order == 1:
            return x_t
        diffs = [(history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)]
        if order == 2:
            rhos = [0.5]
        else:
            rhos = torch.linalg.solve(r_mat[:-1, :-1], b[:-1]).tolist()
        res = sum(r * d for r, d in zip(rhos, diffs))
        return x_t - (alpha_t * b_h) * res

    def _correct(self, state: UniPCState, x0_t: Tensor, i: int) -> Tensor:
        """UniC: re-do the previous update (σ_{i-1} -> σ_i) including the new estimate ``x0_t``."""
        order = state.last_order
        sigma_s0, sigma_t = float(self.sigmas[i - 1]), float(self.sigmas[i])
        alpha_t = 1.0 - sigma_t
        history = state.x0_history
        m0 = history[-1]
        x = state.last_sample
        h_phi_1, b_h, rks, r_mat, b = self._coefficients(self._lambdas(i, i - 1, order), order)
        x_t = (sigma_t / sigma_s0) * x - (alpha_t * h_phi_1) * m0
        diffs = [(history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)]
        if order == 1:
            rhos = [0.5]
        else:
            rhos = torch.linalg.solve(r_mat, b).tolist()
        res = sum((r * d for r, d in zip(rhos[:-1], diffs)), torch.zeros_like(m0))
        return x_t - (alpha_t * b_h) * (res + rhos[-1] * (x0_t - m0))

    # ---- whole loop ------------------------------------------------------------------------

    def sample(
        self,
        velocity: Callable[[Tensor, Tensor, int], Tensor],
        noise: Tensor,
        *,
        after_step: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Run all steps from ``noise`` (at σ_0).

        ``velocity(x, t, i)`` returns v for sample x at model timestep t (a 0-d float32 tensor,
        bf16-rounded) and step index i. ``after_step(x)`` may rewrite the sample after each
        step (e.g. re-insert clean conditioning frames).
        """
        x, state = noise, self.init_state()
        for i, t in enumerate(self.model_timesteps()):
            x, state = self.step(x, velocity(x, t, i), state)
            if after_step is not None:
                x = after_step(x)
        return x


def cfg_combine(cond: Tensor, null: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``null + scale·(cond − null)`` (the base model uses scale 5)."""
    if cond.shape != null.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and null {tuple(null.shape)} predictions must have one shape")
    return null + scale * (cond - null)
