"""Can the view tell whether a held key will move the player? A feasibility bench for a learned pose integrator.

Every model since session 27 was trained on the engine's poses (walls stop them) and is played with poses integrated
from the actions (walls do not): where a strafe meets a wall the simulator stands still and the model slides on, which
the control part's IDM reads as a turn (the shipped model's yaw 0.45 / 0.46 while strafing left / right into a wall,
the simulator's 0.89 / 0.90; session 53). Training on integrated poses instead (session 53) made the DiT stop where no
wall is too. Another way: keep the DiT on the poses it trusts, and integrate the played poses with a small classifier
that says, from the frame a key is pressed on, whether the player will move. This bench measures whether one frame
holds that answer.

Simulator episodes of ``--split`` levels begun anywhere, played with blocks of constant commands (mg3_eval.idm's
block policy: every key class with a yaw class, 14-40 frames each; after a blocked block, a turn in place). Every 6th
frame of a block whose key is held is a sample (its luma frame, 64 px; the key), labelled by whether the player moved
as commanded over frames ``--settle`` .. ``--settle + 12`` after it (the poses' motion class: the key's class = moved,
none = blocked; anything else dropped). A small CNN (the frame, mirrored with left/right swapped at
random, and the key as four constant planes) is trained on the train levels and scored on the test levels. With
``--history 8 16 32`` the net also sees the frames that many frames earlier: whether what the view held before (a wall
passed while turning) tells more than the view alone.

    python bench/blocked_from_view.py --frames 160000 --json bench/results/blocked_from_view_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mg3_eval.idm import KEYBOARD_CLASSES, idm_frames, motion_labels, play_block
from mg3_eval.simulator import doom_config_for
from world_model.checks import positive_arg, seed_arg
from world_model.config import embedded


def collect(
    split: str, num_frames: int, seed: int, settle: int, history: tuple[int, ...] = (), span: int = 12, every: int = 6
):
    """(frames uint8 [N, 1 + len(history), 64, 64]: the frame a key is on, then those ``history`` frames before it (the
    episode's first where it began later); keys int [N] in 1..4; blocked int [N] 0/1) from blocks of constant commands."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    from world_model.data.doom import DoomEngine
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    doom = replace(doom_config_for(embedded()), spawn="anywhere")
    rng = np.random.default_rng([seed, 31])
    xs, keys, blocked = [], [], []
    total, e = 0, 0
    bar = tqdm(total=num_frames, unit="frame", desc=f"{split} levels")
    while total < num_frames:
        level = levels[int(rng.integers(len(levels)))]
        with DoomEngine(level, doom, seed=seed * 1000 + e) as engine:
            frame, pose = engine.reset(seed=seed * 1000 + e)
            frames, poses, blocks = [frame], [pose], []
            stop = False
            while len(frames) < 400 and not stop:
                start = len(frames) - 1
                k, blocked_now, stop = play_block(engine, rng, bool(blocks) and blocks[-1][2], frames, poses)
                blocks.append((start, k, blocked_now, len(frames) - 1 - start))
        e += 1
        poses_arr = np.stack(poses)
        if (np.linalg.norm(np.diff(poses_arr[:, :3], axis=0), axis=1) > 64).any():  # teleported
            continue
        luma = idm_frames(np.stack(frames))
        for start, k, _, n in blocks:
            # every ``every`` frames of a held key: the frame it is on, and how the next frames went
            for t in range(start, start + n - settle - span + 1, every) if k else ():
                a, b = t + settle, t + settle + span
                if b >= len(poses_arr):
                    break
                cls, _ = motion_labels(poses_arr[a : b + 1], span + 1)
                if cls[0] not in (0, k):
                    continue
                xs.append(luma[[t, *(max(t - h, 0) for h in history)]])
                keys.append(k)
                blocked.append(int(cls[0] == 0))
        total += len(frames)
        bar.update(min(len(frames), bar.total - bar.n))
    bar.close()
    return np.stack(xs), np.array(keys), np.array(blocked)


class BlockedNet(nn.Module):
    def __init__(self, frames: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(frames + 4, width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 64), nn.GELU(), nn.Linear(64, 1),
        )  # fmt: skip

    def forward(self, frames: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 127.5 - 1  # [B, F, h, w]
        planes = F.one_hot(keys - 1, 4).float()[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], 1))[:, 0]


_FLIP = torch.tensor([0, 1, 2, 4, 3])  # key classes: a mirrored view swaps left (3) and right (4)


def train(x, k, y, epochs: int, seed: int) -> BlockedNet:
    torch.manual_seed(seed)
    net = BlockedNet(frames=x.shape[1])
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    x, k, y = torch.from_numpy(x), torch.from_numpy(k), torch.from_numpy(y).float()
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            fx, fk = x[idx], k[idx]
            flip = torch.rand(len(idx)) < 0.5
            fx = torch.where(flip[:, None, None, None], fx.flip(-1), fx)
            fk = torch.where(flip, _FLIP[fk], fk)
            loss = F.binary_cross_entropy_with_logits(net(fx, fk), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def auc(score: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y == 1
    if pos.all() or not pos.any():
        return float("nan")
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=positive_arg, default=160_000, help="train-level simulator frames")
    p.add_argument("--held-out-frames", type=positive_arg, default=40_000, help="test-level simulator frames")
    p.add_argument("--settle", type=positive_arg, default=4, help="frames into a block before its motion is measured")
    p.add_argument("--epochs", type=positive_arg, default=8)
    p.add_argument(
        "--history",
        type=positive_arg,
        nargs="*",
        default=[],
        help="also show the net the frames this many frames before (e.g. 8 16 32): what the view held earlier",
    )
    p.add_argument("--threads", type=positive_arg, default=2)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    tr = collect("train", a.frames, a.seed, a.settle, tuple(a.history))
    te = collect("test", a.held_out_frames, a.seed + 7, a.settle, tuple(a.history))
    t1 = time.perf_counter()
    net = train(*tr, a.epochs, a.seed)
    with torch.no_grad():
        score = torch.sigmoid(net(torch.from_numpy(te[0]), torch.from_numpy(te[1]))).numpy()
    pred = (score > 0.5).astype(int)
    y, keys = te[2], te[1]
    rows = {}
    for name, mask in [("all", np.ones(len(y), bool))] + [(KEYBOARD_CLASSES[c], keys == c) for c in range(1, 5)]:
        yy, pp = y[mask], pred[mask]
        if not mask.any():
            rows[name] = {"samples": 0}
            continue
        rows[name] = {
            "samples": int(mask.sum()),
            "blocked_share": float(yy.mean()),
            "auc": auc(score[mask], yy),
            "accuracy": float((pp == yy).mean()),
            "majority_accuracy": float(max(yy.mean(), 1 - yy.mean())),
            "blocked_recall": float(pp[yy == 1].mean()) if (yy == 1).any() else None,
            "moving_kept": float(1 - pp[yy == 0].mean()) if (yy == 0).any() else None,
        }
    out = {
        "command": " ".join(["python bench/blocked_from_view.py", *(sys.argv[1:] if argv is None else argv)]),
        "history": a.history,
        "train_samples": len(tr[2]),
        "train_blocked_share": float(tr[2].mean()),
        "auc": auc(score, y),
        "test": rows,
        "collect_seconds": t1 - t0,
        "train_seconds": time.perf_counter() - t1,
    }
    print(
        f"train {out['train_samples']} samples ({100 * out['train_blocked_share']:.0f} % blocked); test AUC {out['auc']:.3f}"
    )
    print(
        f"{'key':8s} {'n':>5s} {'blocked':>8s} {'auc':>6s} {'acc':>6s} {'majority':>9s} {'blocked caught':>15s} {'moving kept':>12s}"
    )
    for name, r in rows.items():
        if not r["samples"]:
            continue
        print(f"{name:8s} {r['samples']:5d} {r['blocked_share']:8.2f} {r['auc']:6.3f} {r['accuracy']:6.3f} {r['majority_accuracy']:9.3f} "
              f"{r['blocked_recall'] or 0:15.3f} {r['moving_kept'] or 0:12.3f}")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
