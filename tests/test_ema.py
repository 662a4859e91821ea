"""world_model.train.ema.EMA: the shadow's update with and without the warm-up ramp, buffers copied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from world_model.train.ema import EMA


@pytest.mark.parametrize("ramp", [True, False])
def test_shadow_follows_the_decay_and_copies_buffers(ramp):
    model = nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, ramp=ramp)
    want = torch.ones(3)
    for n, value in enumerate((2.0, 4.0, -1.0), start=1):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(value)
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n)) if ramp else 0.9
        want = d * want + (1 - d) * value
        torch.testing.assert_close(ema.model.weight, want)
        torch.testing.assert_close(ema.model.running_mean, torch.full((3,), value))  # copied, not averaged
    assert ema.num_updates == 3 and not ema.model.weight.requires_grad
    if not ramp:  # the starting weights keep their share 0.9^n
        assert float(ema.model.weight[0]) == pytest.approx(0.9**3 * 1.0 + 0.1 * (0.9**2 * 2.0 + 0.9 * 4.0 - 1.0))


def test_decay_outside_its_range_is_refused():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="decay"):
            EMA(nn.Linear(2, 2), decay=bad)
