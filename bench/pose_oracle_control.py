"""How far a pose source that knows the walls would lift the control part's yaw: the IDM's reading of video generated
with the camera poses the simulator reached (it stops at walls) against video generated with the actions integrated
(what the env does: it slides through them), the same commands, starts and noise.

The control part's episodes (mg3_eval.protocols.control: rest starts of the split, one keyboard class and one yaw class
held per chunk, the same random draws) are played in the simulator first; its poses, made relative to its start,
replace the integrated ones through ``ChunkActions.poses``, while the actions still condition the DiT. The difference
is the most a learned pose integrator (one that stops the env's camera where a wall is) could win on this measure; the
simulator's poses are an oracle the env never has.

    python bench/pose_oracle_control.py --model default --episodes 36 --json bench/results/pose_oracle_control_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def relative_poses(poses: np.ndarray) -> np.ndarray:
    """Poses [T, 5] (x, y, z, pitch, yaw; yaw about the vertical z axis) -> the same path in the frame where pose 0
    has position 0 and yaw 0: positions turned by -yaw0 about z, yaws less yaw0 (wrapped), pitch as it was. The
    window conditioning sees only poses relative to one another, which this rigid change of frame keeps."""
    from world_model.data.poses import wrap_degrees

    p = np.asarray(poses, np.float64)
    yaw0 = np.deg2rad(p[0, 4])
    c, s = np.cos(-yaw0), np.sin(-yaw0)
    d = p[:, :3] - p[0, :3]
    out = p.copy()
    out[:, 0] = c * d[:, 0] - s * d[:, 1]
    out[:, 1] = s * d[:, 0] + c * d[:, 1]
    out[:, 2] = d[:, 2]
    out[:, 4] = wrap_degrees(p[:, 4] - p[0, 4])
    return out


def _generate(wm, starts, commands, seeds, sim_poses) -> list[np.ndarray]:
    """Video uint8 [T, H, W, 3] per start from its commands; with ``sim_poses`` (relative [T + 1, 5] each) those
    poses instead of the integrated ones."""
    from world_model.generator import ChunkActions, StreamingGenerator

    gen = StreamingGenerator(wm)
    b = len(starts)
    state = gen.init_state(b)
    images = torch.from_numpy(np.stack([s.frame for s in starts])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    gen.reset_(state, [True] * b, images, wm.encode_prompts([s.prompt for s in starts]), seeds)
    frames: list[list[torch.Tensor]] = [[] for _ in range(b)]
    done = 0  # actions played so far (the same for every env)
    total = commands[0][1].shape[0]
    while done < total:
        t = gen.frames_needed(state, 0)
        acts = []
        for i in range(b):
            kb, ms = (torch.from_numpy(np.ascontiguousarray(x[done : done + t])) for x in commands[i][1:])
            poses = None if sim_poses is None else torch.from_numpy(sim_poses[i][done + 1 : done + 1 + t])
            acts.append(ChunkActions(kb, ms, poses))
        outs, state = gen.step(state, acts)
        for i, o in enumerate(outs):
            frames[i].append(o.frames)
        done += t
    return [torch.cat(f).numpy() for f in frames]


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    from mg3_eval.idm import KEYBOARD_CLASSES, SHIPPED_IDM, InverseDynamics, accuracy, motion_labels
    from mg3_eval.protocols.control import commanded_windows, control_starts, draw_commands, feasible_windows
    from mg3_eval.rollout import chunk_slices
    from mg3_eval.simulator import doom_config_for, play_commands
    from world_model.generator import StreamingGenerator
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help='a registry name or model folder ("default": the embedded one)')
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--episodes", type=int, default=36)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.episodes < 1 or a.chunks < 1 or a.batch < 1 or a.threads < 0:
        p.error("--episodes, --chunks and --batch must be >= 1 and --threads >= 0")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    # exact, as the control part's reference runs (--context-cache off)
    wm = load_world_model(a.model, RuntimeOptions.for_device("cpu", context_cache=False))
    cfg = wm.config
    idm = InverseDynamics.load(SHIPPED_IDM)
    gen = StreamingGenerator(wm)
    slices = chunk_slices(gen.first_chunk_frames, gen.chunk_frames, a.chunks)
    # the control part's windows, rest starts and commands
    scored = commanded_windows(slices, idm.window)
    starts = control_starts(cfg, a.episodes, a.split, a.seed)
    commands = draw_commands(len(starts), slices, a.seed)
    doom = doom_config_for(cfg)
    total = commands[0][1].shape[0]
    sim, kept = [], []
    for i, s in enumerate(starts):
        frames, poses = play_commands(s, doom, commands[i][1], commands[i][2])
        if len(poses) == total + 1:  # the level did not end on the way
            sim.append((frames, poses))
            kept.append(i)
    labels_kb = np.concatenate([[commands[i][0][k][0] for k, _ in scored] for i in kept])
    labels_ms = np.concatenate([[commands[i][0][k][1] for k, _ in scored] for i in kept])
    windows = [w for _, w in scored]
    # feasible: where the simulator moved as commanded (mg3_eval's split), from its poses' classes
    feasible = np.concatenate(
        [
            feasible_windows(*motion_labels(poses, idm.window), commands[i][0], scored)
            for (_, poses), i in zip(sim, kept)
        ]
    )
    rel = [relative_poses(poses) for _, poses in sim]
    videos: dict[str, list[np.ndarray]] = {"sim": [f for f, _ in sim], "integrated": [], "simulator_poses": []}
    for lo in range(0, len(kept), a.batch):
        part = kept[lo : lo + a.batch]
        args = ([starts[i] for i in part], [commands[i] for i in part], [a.seed + i for i in part])
        videos["integrated"] += _generate(wm, *args, None)
        videos["simulator_poses"] += _generate(wm, *args, rel[lo : lo + a.batch])
        print(f"{lo + len(part)}/{len(kept)} episodes ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = {}
    for name, vids in videos.items():
        pk, pm = (np.concatenate(x) for x in zip(*(idm.predict(v, windows) for v in vids)))
        rows[name] = {
            "keyboard_accuracy": accuracy(pk, labels_kb),
            "mouse_accuracy": accuracy(pm, labels_ms),
            "feasible": {"keyboard_accuracy": accuracy(pk, labels_kb, feasible), "mouse_accuracy": accuracy(pm, labels_ms, feasible)},
            "blocked": {"keyboard_accuracy": accuracy(pk, labels_kb, ~feasible), "mouse_accuracy": accuracy(pm, labels_ms, ~feasible)},
            "mouse_accuracy_by_keyboard": {c: accuracy(pm, labels_ms, labels_kb == j) for j, c in enumerate(KEYBOARD_CLASSES)},
            "per_episode_mouse": [float(np.mean(x == y)) for x, y in zip(np.split(pm, len(kept)), np.split(labels_ms, len(kept)))],
        }  # fmt: skip
    diff = np.subtract(rows["simulator_poses"]["per_episode_mouse"], rows["integrated"]["per_episode_mouse"])
    out = {
        "model": a.model,
        "split": a.split,
        "episodes": len(kept),
        "episodes_left_out": len(starts) - len(kept),
        "chunks": a.chunks,
        "windows": int(len(labels_ms)),
        "feasible_fraction": float(feasible.mean()),
        "sampler_steps": cfg.sampler.num_steps,
        "rows": rows,
        "mouse_simulator_poses_minus_integrated": {
            "diff": float(diff.mean()),
            "se": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None,
            "better": int((diff > 0).sum()),
        },
        "seconds": time.perf_counter() - t0,
    }
    print(f"{'video':16s} {'keys':>6s} {'yaw':>6s} {'yaw feasible':>13s} {'yaw blocked':>12s}   yaw by key held")
    for name, r in rows.items():
        by = " ".join(f"{k} {v:.2f}" for k, v in r["mouse_accuracy_by_keyboard"].items() if v is not None)
        print(f"{name:16s} {r['keyboard_accuracy']:6.3f} {r['mouse_accuracy']:6.3f} {r['feasible']['mouse_accuracy']:13.3f} "
              f"{r['blocked']['mouse_accuracy']:12.3f}   {by}")  # fmt: skip
    m = out["mouse_simulator_poses_minus_integrated"]
    print(f"yaw with the simulator's poses minus integrated, per episode: {m['diff']:+.3f} +- {m['se'] or 0:.3f} "
          f"({m['better']} of {len(kept)} better); {out['seconds']:.0f} s")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
