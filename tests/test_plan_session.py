"""bench/gpu/plan_session.py: the flags and budget split a GPU session's stages run with."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "bench/gpu/plan_session.py", "bench/results/train_throughput_h200.json", "20", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def _part(*args: str) -> str:
    out = _run(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _flags(*args: str) -> dict[str, str]:
    tokens = _part(*args).split()
    return dict(zip(tokens[::2], tokens[1::2], strict=True))


def test_the_session_commands_own_flags_win_over_the_plan():
    plain = _flags()
    assert "--memory-lr" in plain and "--memory-batch" in plain
    assert float(plain["--checkpoint-minutes"]) > 0  # a slow stage checkpoints by wall time too (session 31)
    # the session command's flags reach the run through pipeline.json; the plan must not override them
    given = _flags("--given=--seed 25 --memory-lr 5e-05 --memory_batch=64 --frames 300000")
    assert given == {k: v for k, v in plain.items() if k not in ("--memory-lr", "--memory-batch")}


def test_the_session_commands_shares_split_the_budget_and_skip_stages():
    # the plan's own: the DiT (memory) stage takes the time, the decoders none
    assert float(_part("first")) == 0.0 and ",memory" not in _part("skips")
    # a decoders-only session: --shares in the session command
    given = "--given=--seed 26 --shares vae=0.8,decoder=0.15,memory=0.0,encode=0.0 --frames 300000"
    assert float(_part("first", given)) == pytest.approx(20 * 0.95 / 0.96, abs=0.01)  # export keeps its 0.01
    assert ",memory" in _part("skips", given)
    assert "--shares" not in _flags(given)  # the run keeps the session's shares (pipeline.json)


def test_unknown_stages_in_the_given_shares_are_refused():
    out = _run("--given=--shares vea=0.5")
    assert out.returncode != 0 and "unknown stage 'vea'" in out.stderr


def test_a_carried_vae_with_no_share_is_skipped_in_the_first_call():
    # session 27: the VAE of session 26 is carried (and so reopened) but must not train: its encoder makes the latents
    given = "--given=--shares vae=0.0,decoder=0.12,encode=0.05,base=0.8,memory=0.0,export=0.02"
    skips = _part("skips", given).split(",")
    assert "vae" in skips and "decoder" not in skips and "base" not in skips and "memory" in skips
    assert float(_part("first", given)) == pytest.approx(20 * 0.12 / 0.99, abs=0.01)
    # the plan's own shares give the decoders no time: skipped too
    assert {"vae", "decoder"} <= set(_part("skips").split(","))
