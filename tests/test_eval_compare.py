"""mg3_eval.compare: paired differences of two evaluation runs, and what cannot be paired."""

from __future__ import annotations

import json
import math

import pytest

from mg3_eval.compare import compare, format_comparison, main


def _run(name: str, chunk0: list[float], clips: list[float], *, seed: int = 0, fid_eps: int | None = None) -> dict:
    return {
        "model": {"model": name},
        "options": {
            "split": "test",
            "seed": seed,
            "fidelity_episodes": fid_eps or len(chunk0),
            "controllability_episodes": len(clips),
        },  # fmt: skip
        "fidelity": {"chunk0": {"per_episode": chunk0, "gain_db": 0.5}},
        "controllability": {"delta_db_per_clip": clips},
        "sharpness": {"ratio": 0.4, "grid_share_max": 0.003},
    }


def test_paired_differences_their_error_and_wins():
    c = compare(_run("new", [21.0, 20.0, 22.0], [1.0, 0.5]), _run("old", [20.0, 20.5, 21.0], [0.5, 0.5]))
    p = c["paired"]["chunk-0 PSNR dB"]
    assert p["episodes"] == 3 and p["mean_diff"] == pytest.approx(0.5) and p["candidate_better"] == 2
    assert p["stderr"] == pytest.approx(math.sqrt(((1 - 0.5) ** 2 + (-0.5 - 0.5) ** 2 + (1 - 0.5) ** 2) / 2 / 3))
    assert c["paired"]["ΔPSNR true vs shuffled actions dB, per clip"]["mean_diff"] == pytest.approx(0.25)
    assert c["scalars"]["sharpness / simulator's"]["diff"] == 0.0 and c["candidate"] == "new"
    assert c["scalars"]["grid share of generated frames (lower is better)"]["candidate"] == 0.003
    table = format_comparison(c)
    assert "+0.500" in table and "2 of 3" in table


def test_runs_of_other_episodes_do_not_pair():
    with pytest.raises(ValueError, match="different episodes.*seed: 1 vs 0"):
        compare(_run("new", [1.0], [1.0], seed=1), _run("old", [1.0], [1.0]))
    c = compare(_run("new", [1.0, 2.0], [1.0]), _run("old", [1.0, 2.0, 3.0], [0.0]))
    assert "chunk-0 PSNR dB" not in c["paired"] and "2 vs 3 episodes" in c["skipped"]["chunk-0 PSNR dB"]
    assert "not paired" in format_comparison(c)


def test_cli_prints_writes_json_and_refuses_unreadable_input(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.json"
    a.write_text(json.dumps(_run("new", [21.0, 20.0], [1.0])))
    b.write_text(json.dumps(_run("old", [20.0, 20.0], [0.5])))
    assert main([str(a), str(b), "--json", str(out)]) == 0
    assert "chunk-0 PSNR dB" in capsys.readouterr().out
    assert json.loads(out.read_text())["paired"]["chunk-0 PSNR dB"]["mean_diff"] == pytest.approx(0.5)
    assert main([str(a), str(tmp_path / "missing.json")]) == 2
    (tmp_path / "list.json").write_text("[1]")  # not a metrics.json: was an AttributeError deep inside
    capsys.readouterr()
    assert main([str(tmp_path / "list.json"), str(b)]) == 2
    assert "list.json is not the metrics.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # checked before the comparison
        main([str(a), str(b), "--json", str(tmp_path / "no" / "cmp.json")])


def test_runs_of_other_spawns_or_other_simulator_frames_do_not_pair():
    anywhere = _run("new", [20.0], [1.0])
    anywhere["options"]["spawn"] = "anywhere"
    with pytest.raises(ValueError, match="spawn: 'anywhere' vs 'start'"):  # a run from before the option: "start"
        compare(anywhere, _run("old", [20.0], [1.0]))
    a, b = _run("new", [21.0, 20.0], [1.0]), _run("old", [20.0, 19.0], [1.0])
    a["fidelity"]["chunk0"]["gain_per_episode"] = [2.0, 1.0]  # repeat-first 19.0 and 19.0
    b["fidelity"]["chunk0"]["gain_per_episode"] = [1.0, 0.0]  # 19.0 and 19.0: the same frames
    assert compare(a, b)["paired"]["chunk-0 PSNR dB"]["mean_diff"] == pytest.approx(1.0)
    b["fidelity"]["chunk0"]["gain_per_episode"] = [1.0, 0.5]  # episode 1's baseline 18.5: other frames
    with pytest.raises(ValueError, match="different simulator frames.*episode 1"):
        compare(a, b)


def test_stability_pairs_each_rollout_and_lower_change_is_better():
    """The stability part's rollouts pair one by one (its episodes' relative changes): the candidate is better where its
    change is smaller; runs of other rollout counts do not pair."""

    def run(name: str, brightness: list[float]) -> dict:
        eps = [{"relative_change": {"brightness": b, "contrast": 0.1, "sharpness": 0.05}} for b in brightness]
        return {
            "model": {"model": name},
            "options": {"split": "test", "seed": 0, "stability_episodes": len(brightness)},
            "stability": {"episodes": eps, "relative_change": {"brightness": sum(brightness) / len(brightness)}},
        }

    c = compare(run("new", [0.10, 0.30, 0.05]), run("old", [0.20, 0.20, 0.10]))
    p = c["paired"]["rollout brightness change (lower is better)"]
    assert p["mean_diff"] == pytest.approx(-0.05 / 3) and p["candidate_better"] == 2 and p["episodes"] == 3
    assert c["paired"]["rollout contrast change (lower is better)"]["candidate_better"] == 0
    assert c["scalars"]["stability brightness change"]["diff"] == pytest.approx(-0.05 / 3)
    other = compare(run("new", [0.1, 0.2]), run("old", [0.2, 0.2, 0.1]))
    assert "rollout brightness change (lower is better)" in other["skipped"]


def test_control_accuracies_are_shown_side_by_side():
    def run(name: str, keys: float, mouse: float) -> dict:
        r = _run(name, [20.0], [1.0])
        feasible = {"keyboard_accuracy": keys + 0.01, "mouse_accuracy": mouse + 0.05}
        r["control"] = {"model": {"keyboard_accuracy": keys, "mouse_accuracy": mouse, "feasible": feasible}}
        return r

    c = compare(run("new", 0.92, 0.80), run("old", 0.94, 0.82))
    assert c["scalars"]["control keys accuracy"]["diff"] == pytest.approx(-0.02)
    assert c["scalars"]["control mouse, feasible windows"]["candidate"] == pytest.approx(0.85)
    assert "control mouse accuracy" in format_comparison(c)


def test_control_runs_pair_by_episode():
    def run(name: str, mouse: list[float]) -> dict:
        r = _run(name, [20.0], [1.0])
        r["options"]["control_episodes"] = len(mouse)
        r["control"] = {"model": {"per_episode": {"keyboard": [1.0] * len(mouse), "mouse": mouse}}}
        return r

    c = compare(run("new", [0.8, 0.9, 0.7]), run("old", [0.9, 0.9, 0.9]))
    p = c["paired"]["control mouse accuracy, per episode"]
    assert p["mean_diff"] == pytest.approx(-0.1) and p["candidate_better"] == 0 and p["episodes"] == 3
    assert c["paired"]["control keys accuracy, per episode"]["mean_diff"] == 0.0
