"""bench/judge_teacher.sh: its groups, session 52's reference runs, and bad input refused before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.bench_loader import fake_mg3

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "judge_teacher.sh"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_every_reference_run_the_script_names_is_session_52s_teacher_in_16_steps():
    prefix = re.search(r"^ref=(\S+)", SCRIPT.read_text(), re.M).group(1)
    refs = re.findall(r"reference=\$\{ref\}(\S+?\.json)", SCRIPT.read_text())
    assert len(refs) == 6  # control, paired, generated, train, retextured, stability
    for suffix in refs:
        metrics = json.loads((ROOT / f"{prefix}{suffix}").read_text())
        assert metrics["model"]["sampler_steps"] == 16, suffix
    for name in ("strafe_pathways_test_anywhere_teacher_s52_cpu.json", "depth_probe_test_cpu_session52_teacher.json"):
        assert name in SCRIPT.read_text() and (ROOT / "bench" / "results" / name).exists()


def test_an_unknown_group_is_refused_before_any_group_runs(tmp_path):
    out = tmp_path / "out"
    r = _run(["M", str(out), "control", "bogus"])
    assert r.returncode == 2 and "unknown group bogus" in r.stderr and "depth" in r.stderr
    assert not out.exists()
    assert _run(["M"]).returncode == 2


def test_a_group_runs_mg3_eval_in_16_exact_steps_and_pairs_it_with_session_52s_run(tmp_path):
    reference = ROOT / "docs" / "embedded" / "metrics_session52_memory3487_16steps_fidelity12_generated_levels_cpu.json"
    fake, path = fake_mg3(tmp_path, reference)  # writes the reference run as its own result, records its arguments
    r = _run(["MODEL_DIR", str(tmp_path / "out"), "generated"], PATH=path)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["eval", "--model", "MODEL_DIR"]
    assert args[args.index("--sampler-steps") + 1] == "16" and args[args.index("--context-cache") + 1] == "off"
    assert args[args.index("--split") + 1] == "generated" and args[args.index("--episodes") + 1] == "12"
    compared = json.loads((tmp_path / "out" / "compare_generated.json").read_text())
    assert compared["paired"]["chunk-0 PSNR dB"]["mean_diff"] == 0.0  # the reference against itself
    # a group that fails is reported and the rest go on; the exit status says so
    fake.write_text("#!/usr/bin/env bash\nexit 3\n")
    r = _run(["MODEL_DIR", str(tmp_path / "out2"), "train", "generated"], PATH=path)
    assert r.returncode == 1 and "group train failed" in r.stderr and "group generated failed" in r.stderr
