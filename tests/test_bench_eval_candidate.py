"""bench/eval_candidate.sh: its groups, their reference runs, and bad input refused before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.bench_loader import fake_mg3

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "eval_candidate.sh"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_every_reference_run_the_script_names_is_in_the_repository():
    refs = re.findall(r"reference=\$ref/(\S+?\.json)", SCRIPT.read_text())
    assert len(refs) == 7  # rs, paired, memory, motion, stability, control, anywhere
    for name in refs:
        metrics = json.loads((ROOT / "docs" / "embedded" / name).read_text())
        assert "model" in metrics, name


def test_an_unknown_group_is_refused_before_any_group_runs(tmp_path):
    out = tmp_path / "out"
    r = _run(["M", str(out), "rs", "bogus"], tmp_path)
    assert r.returncode == 2 and "unknown group bogus" in r.stderr and "stability" in r.stderr
    assert not out.exists()
    assert _run(["M"], tmp_path).returncode == 2


def test_a_group_runs_mg3_eval_in_the_candidates_steps_and_pairs_it_with_its_reference(tmp_path):
    reference = ROOT / "docs" / "embedded" / "metrics_session46_student283_8steps_rs_cpu.json"
    fake, path = fake_mg3(tmp_path, reference)  # writes the reference run as its own result, records its arguments
    r = _run(["MODEL_DIR", str(tmp_path / "out"), "rs"], tmp_path, PATH=path)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["eval", "--model"] and "MODEL_DIR" in args
    assert "--sampler-steps" not in args and args[args.index("--parts") + 1] == "reset,sharpness"  # its own steps
    assert args[args.index("--context-cache") + 1] == "off"  # exact, as the reference runs
    compared = json.loads((tmp_path / "out" / "compare_rs.json").read_text())
    assert compared["paired"]["reset frame PSNR dB"]["mean_diff"] == 0.0  # the reference against itself
    r = _run(["MODEL_DIR", str(tmp_path / "out16"), "rs"], tmp_path, PATH=path, STEPS="16")
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--sampler-steps") + 1] == "16"
    r = _run(["MODEL_DIR", str(tmp_path / "outcc"), "rs"], tmp_path, PATH=path, EVAL_ARGS="--context-cache on --seed 3")
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[len(args) - 1 - args[::-1].index("--context-cache") + 1] == "on"  # the last one, EVAL_ARGS', wins
    assert args[args.index("--seed") + 1] == "3"  # EVAL_ARGS reach every group
