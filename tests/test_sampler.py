"""Flow-matching UniPC sampler: schedule values, hand-derived steps, convergence, diffusers parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from world_model.config import SamplerConfig, mg3_5b
from world_model.sampler import FlowUniPCSampler, UniPCState, cfg_combine, flow_schedule


def test_three_step_schedule_matches_release():
    s = flow_schedule(3, 5.0)
    assert s.timesteps.tolist() == [999, 908, 713]
    assert s.timesteps.dtype == torch.int64
    np.testing.assert_allclose(s.sigmas.numpy(), [0.99980, 0.90884, 0.71398, 0.0], atol=5e-6)
    assert s.sigmas[-1].item() == 0.0


def test_fifty_step_schedule_matches_release():
    t = flow_schedule(50, 5.0).timesteps.tolist()
    assert len(t) == 50
    assert t[:5] == [999, 995, 991, 987, 982]
    assert t[-1] == 92
    assert all(a > b for a, b in zip(t, t[1:]))


def test_model_sees_bf16_rounded_timesteps():
    sampler = FlowUniPCSampler.from_config(SamplerConfig())
    assert sampler.model_timesteps().tolist() == [1000.0, 908.0, 712.0]
    assert FlowUniPCSampler.from_config(mg3_5b(distilled=False).sampler).num_steps == 50


def test_set_timesteps_replaces_schedule():
    sampler = FlowUniPCSampler()
    sched = sampler.set_timesteps(50, 5.0)
    assert sampler.num_steps == 50 and sched.timesteps[0].item() == 999
    with pytest.raises(ValueError, match="num_steps"):
        sampler.set_timesteps(0, 5.0)


def _linear_velocity(x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-0.5, 0.7, x.shape[-1], dtype=x.dtype)
    return 0.3 * x + w + 0.1 * x.flip(-1)


def _ddim(x: torch.Tensor, x0: torch.Tensor, sigma_s: float, sigma_t: float) -> torch.Tensor:
    """Deterministic flow step: keep the implied noise, move to σ_t: (1 − σ_t)·x0 + σ_t·ε̂."""
    eps = (x - (1 - sigma_s) * x0) / sigma_s
    return (1 - sigma_t) * x0 + sigma_t * eps


def _lam(s: float) -> float:
    return math.log((1 - s) / s)


def test_steps_match_hand_derived_formulas():
    """Order 1 = DDIM; corrector = DDIM with the mean of both clean estimates; order-2 predictor =
    DDIM with the clean estimate extrapolated linearly in log-SNR to the step's midpoint."""
    sampler = FlowUniPCSampler(3, 5.0)
    sig = sampler.sigmas.tolist()
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = sampler.init_state()

    v0 = _linear_velocity(x)
    m0 = x - sig[0] * v0
    x1, state = sampler.step(x, v0, state)
    torch.testing.assert_close(x1, _ddim(x, m0, sig[0], sig[1]))

    v1 = _linear_velocity(x1)
    m1 = x1 - sig[1] * v1
    x2, state = sampler.step(x1, v1, state)
    corrected = _ddim(x, 0.5 * (m0 + m1), sig[0], sig[1])
    torch.testing.assert_close(state.last_sample, corrected)
    # the predictor starts from the corrected sample but uses the estimate made at x1 (m1)
    slope = (m1 - m0) / (_lam(sig[1]) - _lam(sig[0]))
    mid = 0.5 * (_lam(sig[2]) - _lam(sig[1]))
    torch.testing.assert_close(x2, _ddim(corrected, m1 + slope * mid, sig[1], sig[2]))

    v2 = _linear_velocity(x2)
    x3, state = sampler.step(x2, v2, state)
    torch.testing.assert_close(x3, x2 - sig[2] * v2)  # final σ = 0: the clean estimate
    assert state.step_index == 3
    with pytest.raises(ValueError, match="new state"):
        sampler.step(x3, v2, state)


def _gaussian_velocity(mu: torch.Tensor, s: torch.Tensor):
    """Exact flow velocity E[ε − x0 | x_σ] for data x0 ~ N(mu, s²) per element."""

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        a = 1 - sigma
        var = a * a * s * s + sigma * sigma
        r = x - a * mu
        e_x0 = mu + a * s * s / var * r
        e_eps = sigma / var * r
        return e_eps - e_x0

    return velocity


@pytest.mark.parametrize("steps,shift,tol", [(50, 1.0, 5e-3), (100, 5.0, 0.05)])
def test_sampling_gaussian_flow_converges(steps, shift, tol):
    """For Gaussian data the flow ODE maps noise z to mu + s·z; the sampler must land there."""
    mu = torch.tensor([1.5, -2.0, 0.0, 0.5], dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)
    vel = _gaussian_velocity(mu, s)
    sampler = FlowUniPCSampler(steps, shift)
    sig = sampler.sigmas.tolist()
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []

    def velocity(x, t, i):
        seen.append(float(t))
        return vel(x, sig[i])

    out = sampler.sample(velocity, z)
    # the exact map from σ_max (not quite 1) to 0: x0 = mu + s·(x − (1−σ)mu)/sqrt(var)
    a0 = 1 - sig[0]
    exact = mu + s * (z - a0 * mu) / torch.sqrt(a0 * a0 * s * s + sig[0] ** 2)
    err = (out - exact).abs().max().item()
    assert err < tol, f"{steps} steps: max error {err}"
    assert seen == sampler.model_timesteps().tolist()


def test_more_steps_more_accurate():
    mu, s = torch.tensor([2.0]), torch.tensor([0.3])
    vel = _gaussian_velocity(mu.double(), s.double())
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errs = []
    for n in (2, 5, 20):
        sampler = FlowUniPCSampler(n, 5.0)
        sig = sampler.sigmas.tolist()
        out = sampler.sample(lambda x, t, i, sig=sig: vel(x, sig[i]), z)
        a0 = 1 - sig[0]
        exact = mu + s * (z - a0 * mu) / math.sqrt((a0 * s.item()) ** 2 + sig[0] ** 2)
        errs.append((out - exact).abs().max().item())
    assert errs[0] > errs[1] > errs[2], errs


def test_batched_equals_unbatched_and_keeps_dtype():
    sampler = FlowUniPCSampler(3, 5.0)
    x = torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    full = sampler.sample(lambda x, t, i: _linear_velocity(x), x)
    parts = torch.cat([sampler.sample(lambda x, t, i: _linear_velocity(x), x[b : b + 1]) for b in range(3)])
    torch.testing.assert_close(full, parts, rtol=0, atol=1e-6)
    xb = x.to(torch.bfloat16)
    out, state = sampler.step(xb, _linear_velocity(xb), sampler.init_state())
    assert out.dtype == torch.bfloat16 and state.last_sample.dtype == torch.float32


def test_after_step_conditioning_frames_stay_clean_and_do_not_leak():
    sampler = FlowUniPCSampler(3, 5.0)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(1, 2, 5, 3, 3, generator=g)  # [B, C, F, h, w]
    clean = torch.randn(1, 2, 1, 3, 3, generator=g)

    def keep(x):
        x = x.clone()
        x[:, :, :1] = clean
        return x

    vel = lambda x, t, i: 0.5 * x + 0.1  # noqa: E731  elementwise, so frames are independent
    out = sampler.sample(vel, keep(noise), after_step=keep)
    plain = sampler.sample(vel, noise)
    torch.testing.assert_close(out[:, :, :1], clean)
    torch.testing.assert_close(out[:, :, 1:], plain[:, :, 1:])


def test_state_is_explicit_and_immutable():
    sampler = FlowUniPCSampler(3, 5.0)
    x = torch.randn(2, 4)
    s0 = sampler.init_state()
    x1, s1 = sampler.step(x, _linear_velocity(x), s0)
    assert s0 == UniPCState() and s1.step_index == 1 and len(s1.x0_history) == 1
    # replaying from the same state gives the same result
    x1b, _ = sampler.step(x, _linear_velocity(x), s0)
    torch.testing.assert_close(x1, x1b)
    with pytest.raises(ValueError, match="shape"):
        sampler.step(x, torch.zeros(3, 4), s0)


def test_cfg_combine():
    cond, null = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(cfg_combine(cond, null, 5.0), torch.tensor([3.0, 14.0]))
    torch.testing.assert_close(cfg_combine(cond, null, 1.0), cond)
    with pytest.raises(ValueError, match="one shape"):
        cfg_combine(cond, null[:1], 5.0)


@pytest.mark.parametrize("steps,order", [(3, 2), (50, 2), (10, 1), (10, 3)])
def test_matches_diffusers_unipc(steps, order):
    """diffusers' UniPC with flow sigmas, given the release's unshifted sigmas, is the same sampler."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=5.0, solver_order=order
    )
    ref.set_timesteps(sigmas=np.linspace(0.999, 0, steps + 1)[:-1])
    ours = FlowUniPCSampler(steps, 5.0, solver_order=order)
    assert ref.timesteps.tolist() == ours.timesteps.tolist()
    torch.testing.assert_close(ref.sigmas.double(), ours.sigmas, atol=1e-6, rtol=0)
    xa = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(5))
    xb, state = xa.clone(), ours.init_state()
    for t in ref.timesteps:
        xa = ref.step(_linear_velocity(xa), t, xa).prev_sample
        xb, state = ours.step(xb, _linear_velocity(xb), state)
    torch.testing.assert_close(xa, xb, atol=1e-5, rtol=1e-5)
