"""Triton kernels on the CPU: a script run under Triton's interpreter (TRITON_INTERPRET=1), and the agreement of
its e4m3 output with a torch reference. Where Triton is not installed (CPU builds of torch come without it), the
tests that use it skip. The interpreter's roundings are not the GPU's (triton 3.9): an e4m3 value that rounds up to
a power of two comes out as half of it (127.9 -> 64), ties may differ, and fp32 -> bf16 truncates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(script: str) -> None:
    """Run ``script`` (which ends by printing "ok") under the interpreter, this folder and the repository importable."""
    pytest.importorskip("triton", reason="Triton is not installed (CPU builds of torch come without it)")
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def e4m3_agree(q, want, s=1.0, want_s=1.0, slack: float = 0.0, share: float = 0.1) -> None:
    """e4m3 values ``q`` (scaled by ``s``) within one e4m3 step of the reference's ``want`` (scaled by ``want_s``)
    plus ``slack`` in value units, or the interpreter's lost carry (q a power of two where the reference rounded near
    2q); under ``share`` of them different at all."""
    q, want = q.float(), want.float()
    step = lambda v: torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(2.0**-6))) - 3)  # noqa: E731
    close = (q * s - want * want_s).abs() <= 1.001 * step(want) * want_s + slack
    pow2 = q.abs() == torch.exp2(torch.round(torch.log2(q.abs().clamp_min(2.0**-9))))
    carry_lost = pow2 & ((2 * q * s - want * want_s).abs() <= 2 * step(2 * q) * want_s + slack)
    bad = ~(close | carry_lost)
    assert not bool(bad.any()), (q[bad][:5].tolist(), want[bad][:5].tolist())
    assert float((q != want).float().mean()) < share
