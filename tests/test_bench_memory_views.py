"""bench/memory_views.py: the sheet's layout (the rollouts are the memory test's own, tested with it)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bench_loader import load_bench


def _module():
    return load_bench("memory_views.py")


def test_sheet_puts_each_models_start_and_return_beside_the_simulators_frame():
    mod = _module()
    frame = lambda v: np.full((8, 8, 3), v, np.uint8)  # noqa: E731
    rows = [("a", [(frame(10), frame(20), frame(30))]), ("b", [(frame(10), frame(40), frame(50))])]
    img = np.asarray(mod.sheet(rows, [7], scale=2))
    h, w, pad, gap = 16, 16, 14, 4
    assert img.shape == (2 * (h + pad), 3 * (w + gap), 3)
    for r, values in enumerate([(10, 20, 30), (10, 40, 50)]):
        y = r * (h + pad) + pad + h // 2
        assert [int(img[y, k * (w + gap) + w // 2, 0]) for k in range(3)] == list(values)


def test_episodes_beyond_the_tests_starts_raise_before_any_rollout(monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "load_world_model", lambda model: type("WM", (), {"config": None})())
    monkeypatch.setattr(mod, "rest_starts", lambda cfg, n, **kw: list(range(n)))
    with pytest.raises(ValueError, match="episodes must be < 24"):
        mod.views("default", [3, 24])
