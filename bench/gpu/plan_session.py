"""Pipeline flags for one GPU session from the throughput bench measured at its start.

Prints ``--flag value`` pairs: the budget shares, the batch sizes, which flow stages compile the DiT
(where the bench's compiled row was >= 15 % faster and the stage is long enough to win back the
cold compile), and the GAN
start steps of the VAE and decoder stages (at 45 % and 30 % of the steps their budget share buys
at the measured rate, so that the discriminator comes in once reconstruction has converged; at once
for a stage resumed past GAN_CONVERGED steps) and the adversarial term's weight.

    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES
    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES first   # minutes of vae + decoder
    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES rest    # minutes of the others
    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES skips   # ",dmd" where its share is 0
    python bench/gpu/plan_session.py runs/train_throughput.json BUDGET_MINUTES --resume runs/embedded

With ``--resume RUN`` the GAN start steps count from the step each stage resumes at (its status.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# session 1 of the new recipe (2026-12-01) gave the DiT stages too little: compiling the whole model
# took most of the memory stage; compilation is per block now, and the VAE (the blur) gets the most.
# Session 2 (same day): DMD's 336 steps from a 129-step memory model made chunk 0 worse than the
# memory model itself (held-out gain 0.58 vs 1.12 dB), so DMD waits (share 0: skipped) until the
# base model continues its own chunks; the VAE trains its decoder only from now on
# (--vae-train-encoder false) and the DiT carries on from the last session's weights. Its chunk 1
# after its own chunk 0 was 2.4 dB worse than after the true one (4 held-out segments, CPU), so a
# tenth of the continuation batches condition on the model's own previous chunk (OWN_HISTORY)
# Session 6 (same day): the VAE's decoder (5,315 steps) and the pruned decoder (1,817 steps, 25.9 dB
# held-out, the green cast gone with the low-pass term) are good enough that the DiT, whose chunks
# lose the scene's layout, gets most of the time from session 7 on.
# Session 7: 938 more VAE-decoder steps gained 0.2 dB (25.4 -> 25.6), the pruned decoder 0.25 dB, while
# the DiT's test measures rose in every respect (chunk-0 gain -0.06 -> +0.98 dB): from session 8 the
# decoders get 11 % (about the time the recorder takes for --frames 600000, which the encode stage
# waits for; each session records new episodes with --seed) and the DiT stages the rest.
# Session 8: the base stage (60 %) trains the carried memory model's weights without memory inputs
# for most of the session, and the memory stage (24 %) then has to bring them back: the held-out
# chunk-0 gain rose more in the memory stage's 1,094 steps (1.32 -> 1.46 dB; chunk 1 2.02 -> 2.14,
# rollout -0.35 -> -0.18) than in the base stage's last 3,000. From session 9 on, a continued session
# trains what is shipped, the memory model, for all of the DiT's time (its windows mix chunk-0,
# continuation and memory-conditioned samples as before); base's 0 skips it (needs a carried base).
# Session 9: the memory model's held-out chunk-0 gain went 2.75 -> 2.83 dB over its 4,265 steps (2,000-4,265
# with the cooldown), flat; on the test levels (CPU) it was sharper and followed pitch, yaw and forward
# motion better than session 7's, with chunk-0 PSNR the same. By eye the reset frame, the VAE's own
# reconstruction of the input, has already lost every fine texture (docs/embedded: reset frames): the
# decoders, with their encoder frozen since session 2 (the DiT's latents stay valid whatever they
# learn), get more of the time from session 10 on, with the adversarial term on from their first step
# (reconstruction converged long ago: GAN_CONVERGED), ramped in over GAN_RAMP steps (the slim carries no
# discriminator: it starts untrained each session) and weighted 6x (GAN_WEIGHT: the decoder's adversarial
# gradient at 30 % of the reconstruction gradient's norm instead of 5 %; the fixed weight that took over
# on 2026-12-01 put it at ~2.6x).
# Session 10: the decoders' 27 % at GAN weight 0.3 raised the test levels' VAE sharpness 0.48 -> 0.50 of the
# simulator's (reset frame 29.1 -> 29.2 dB): the adversarial term's weight goes to 1.0 (its gradient as large
# as reconstruction's, as in VQGAN). The memory model's held-out chunk-0 gain was flat for the third session
# (+1.35 dB at step 2,000 of 3,161, +1.24 at the end, seed 10's episodes) and on the test levels it moved by
# less than the noise: from session 11 the DiT's time is split between the memory model and DMD from it
# (the release's route to a few-step sampler's sharp frames: sampled in 4 steps the memory model is at 0.36
# of the simulator's sharpness while its VAE is at 0.50), at a student learning rate 5x the old default
# (DMD_LR: ~150 student updates fit in its share, too few at 2e-6 to move an 18 M model). The export stage
# writes the memory model too (runs/embedded/export_memory), so the test levels pick which one ships.
# Session 11 (665 DMD steps, 133 student updates, 1.9 steps/s eager): on the test levels its student's frames
# are sharper (0.48 of the simulator's against 0.36) and show the new content of walking forward (1.02 against
# 0.58), yaw, pitch and the effect of the actions as before, its chunk 0 0.98 dB lower (the blur's PSNR: a sample
# where the teacher averaged), and its memory mostly gone (return view +2.83 dB over memory off, the
# teacher +9.91). The student is carried from now on (pack.sh student; session.sh unpacks it), so that its
# updates add up over sessions, and DMD takes the larger share, at half the learning rates (the memory lost
# in 133 updates at 1e-5: steps too large for what the teacher's score says about remembered content).
# Session 12 (from the shipped model: session 11's slim and student were lost with the checkout): the memory
# model's 994 steps left the test levels where they were (paired over 18 episodes: chunk 0 -0.08 +- 0.05 dB,
# ΔPSNR -0.02 +- 0.04), the fourth flat session; the DMD student (785 steps, 157 updates) reached 0.57 of the
# simulator's sharpness (its VAE 0.50) with a memory gain of +3.9 dB (the memory model +9.9: the return view
# 20.8 dB against 28.6). From session 13 the memory stage is skipped (its carried base, the shipped memory
# model, is DMD's teacher) and DMD takes the DiT's time, its student regressed a little towards the teacher's
# sample from the same history (DMD_REGRESSION), which holds what the teacher remembers.
# Session 13 (DMD from session 12's student, regression 0.1, 1,000 steps kept of 1,130: the machine's budget
# ended the stage early): the regression held more of the content (return view 22.6 dB against session 12's
# student's 20.8, the shipped model's 28.6) and gave back most of the sharpness (generated frames 0.41 of the
# simulator's through the shipped VAE, session 12's student 0.57, the memory model 0.37); the decoder stage's 966
# steps on the true frames at GAN weight 1.0 drew a grid over every frame and lost 1.6 dB on the reset frame
# (27.6 against 29.2). Neither shipped. From session 14 the DiT stays the shipped memory model and its time goes
# to the sharpen stage (world_model/train/sharpen.py): the pruned decoder learns to make sharp frames of the
# memory model's own latents, which keeps what the DiT remembers and follows; GAN weight back to session 10's 0.3.
# Session 14 trained it for ~13 minutes and lost the run before the packs (the machine went back while the agent
# holding the calls stalled; bench/gpu/poll.sh now packs the export in the poll that sees the session done):
# session 15 runs the same plan.
# Session 15 trained it for ~12 minutes (held-out gen_sharpness_ratio 0.60 -> 0.85 -> 1.06 at steps 870-3,520) and
# lost it when the machine went back between two polls; session 16 (seed 16) for ~8 minutes, and a poll packed its
# step-2,000 checkpoint before the machine went the same way (the helper holding the calls took ~67 s between
# them). On the test levels that decoder made generated frames 0.69 of the simulator's sharpness (shipped 0.36),
# reset frame 29.2 dB (29.2), but by eye a 4-pixel screen door over every frame: 8.9 % of the fine detail on one
# fixed-grid pattern (mg3_eval's grid_share; the simulator 0.01 %, the shipped decoder 0.4 %). A penalty on that
# share (--sharpen-grid) did not help in CPU checks (SharpenOptions.grid_weight: off). From session 17 the stage
# writes its decoder every 500 steps (sharpen/snapshots; every poll packs the new ones), so that the candidate shipped
# is chosen on the test levels, by grid_share and by eye along the curve (sharpness rose 0.31 -> 0.61 held out by
# step 2,000 of session 16: an earlier snapshot may hold most of it before the grid), not the last step's.
# Session 17 (seed 17, --gan-translate 4) ran the stage to its 4,000 steps: every snapshot drew a screen door of its
# own (grid share 0.034-0.066 at 0.86-1.19 of the simulator's sharpness; step 500 already), the mean of six cut the
# grid to 0.018 at 0.96, and 0.3 of the way from the shipped decoder to step 1,500 gave 0.43 at 0.009. From session
# 18 the stage hands on the moving average of its decoder (--sharpen-ema 0.999, no warm-up ramp).
# Session 18: four sessions of the sharpen stage bought sharpness only by inventing detail (a screen door, or a
# PSNR cost on remembered views when tamed): the blur is the DiT's, whose test measures have been flat from ~7,000
# to ~20,000 steps. The DiT's time goes to the memory model again, grown by two blocks (GROW=2 bash
# bench/gpu/session.sh ...; world_model/train/grow.py: appended blocks start as the identity), within the CPU bound.
# Session 18 (3,946 steps, 10 blocks): the training loss fell 0.436 -> 0.404 where sessions 9-12 were flat, and on the
# test levels chunk 0 rose +0.19 +- 0.08 dB paired (14 of 18), the rest the same, but its frames were blurrier (0.327
# of the simulator's sharpness against 0.362): not shipped. From session 19 the grown model trains on (.carry/p18,
# --dit-layers 10; GROW=2 makes it 12 blocks, +27 % CPU time against the shipped 8: within 16 frames/s) with the
# same shares, and candidates are also judged at 6 sampler steps (sharpness 0.36 -> 0.44 on the shipped weights).
SHARES = {"data": 0.0, "vae": 0.0, "decoder": 0.0, "encode": 0.04, "base": 0.0, "memory": 0.85, "dmd": 0.0,
          "sharpen": 0.0, "export": 0.01}  # fmt: skip
GAN_WEIGHT = 0.3
# steps between measurements of the adaptive GAN weight (two extra gradients through the decoder each time), reused
# between. On the CPU (tiny config, `PYTHONPATH=. python bench/train_throughput.py --quick --device cpu --stages vae
# --gan-lambda-every 4 --steps 40 --warmup 4`, two runs) the adversary's steps ran 18-19 % faster eager (6.33 -> 7.49,
# 6.71 -> 8.00 steps/s) and 19-21 % compiled; the H200's figure comes with the VAE stage's metrics (6.24 steps/s eager
# measured every step, session 25)
GAN_LAMBDA_EVERY = 4
GAN_RAMP = 300
DMD_LR = 5e-6
DMD_CRITIC_LR = 1e-5
# Session 12: DMD ran at 2.9 steps/s on the cold start's true histories and 1.3 after it, where every step
# rolled out up to 6 chunks of history first; from session 13 a rollout serves the 5 steps from one student
# update to the next (DMDOptions.rollout_reuse; the student does not change in between)
DMD_ROLLOUT_REUSE = 5
DMD_REGRESSION = 0.1
# generated crops per sharpen step (beside vae-batch true clips)
SHARPEN_GEN_BATCH = 16
# a stage resumed at or past this step has converged reconstruction: its discriminator is on from the start
GAN_CONVERGED = 2000
OWN_HISTORY = 0.1
# share of the flow stages' samples trained with null actions (--action-dropout), which action guidance
# at inference (SamplerConfig.action_guidance) needs; from session 6 on (0 in sessions 1-5)
ACTION_DROPOUT = 0.1
# Session 8: the base stage's held-out chunk-0 gain went 1.31 -> 1.43 -> 1.32 dB over steps 2,000-5,115
# at a constant learning rate, the loss flat at ~0.48: the memory stage (whose EMA is exported) now ends
# on a decayed learning rate, linear to 5 % over its last MEMORY_COOLDOWN of time (warmup-stable-decay)
MEMORY_COOLDOWN = 0.3
# Session 25 lost its first machine at the memory stage's step ~800, before the first checkpoint (the default 1,000):
# every poll packs the newest checkpoint, so checkpoints twice as often halve what a lost machine takes with it
# (a DiT stage's save is a few seconds every ~2 minutes)
CHECKPOINT_EVERY = 500
# Session 31 lost its machine in the DMD stage past step 190 (~0.8 steps/s guided at batch 48: 500 steps are ~10
# minutes) with no checkpoint yet: every stage also checkpoints every CHECKPOINT_MINUTES of wall time, whatever its
# rate, so that a poll (every ~5 minutes) always has a checkpoint at most this old to bring home
CHECKPOINT_MINUTES = 3.0
# stages that a share of 0 skips (the data stage's 0 only means it takes no time of its own). Session 27 carries a
# trained VAE whose encoder stays as it is (the DiT learns its latents): its share of 0 must skip it in the first
# call too, where every carried stage is reopened (session.sh appends these to both calls' --skip)
SKIPPABLE = ("vae", "decoder", "base", "memory", "dmd", "sharpen")
# cold per-block compilation of a flow stage's DiT, measured on the H200 (2026-12-01: base 92 s, memory 96 s)
COMPILE_S = 100.0


def rate(rows: list[dict], **match) -> float | None:
    for r in rows:
        if "error" not in r and all(r.get(k) == v for k, v in match.items()):
            return float(r["steps_per_s"])
    return None


def resumed_step(run: Path | None, stage: str) -> int:
    from world_model.train.status import read_status

    status = read_status(run / stage) if run else None
    return int(status.get("step", 0)) if status else 0


def encoder_only(run: Path | None) -> bool:
    """Whether ``run``'s carried ``vae`` stage holds an encoder only (``slim --from-export``): then the vae
    stage does not train (its full decoder is gone) and the decoder stage trains the pruned decoder on the
    true frames instead of distilling it."""
    from world_model.train.pipeline import vae_is_encoder_only

    return run is not None and vae_is_encoder_only(run)


def gan_start(resumed: int, warmup_steps: float) -> int:
    """The step the stage's discriminator starts at: after ``warmup_steps`` of reconstruction, or at once
    when the stage resumes from a converged checkpoint (step >= GAN_CONVERGED)."""
    return resumed if resumed >= GAN_CONVERGED else resumed + int(warmup_steps)


def given_flags(text: str) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs of a command line (names with dashes; a bare flag: "")."""
    out: dict[str, str] = {}
    tokens = text.split()
    for i, t in enumerate(tokens):
        if t.startswith("--"):
            name, eq, value = t[2:].partition("=")
            if not eq:
                value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else ""
            out[name.replace("_", "-")] = value
    return out


def parse_shares(text: str) -> dict[str, float]:
    """``"vae=0.8,decoder=0.15"`` -> {stage: share}; a stage the pipeline lacks raises."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        stage, _, value = item.partition("=")
        if stage not in SHARES:
            raise SystemExit(f"--shares: unknown stage {stage!r} (stages: {', '.join(SHARES)})")
        out[stage] = float(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench")
    p.add_argument("budget", type=float)
    p.add_argument("part", nargs="?", choices=("first", "rest", "skips"))
    p.add_argument("--resume", type=Path, default=None)
    p.add_argument("--given", default="", help="the session command's own flags: the plan leaves those to it")
    args = p.parse_args()
    given = given_flags(args.given)
    if "shares" in given:  # the session's own shares replace the plan's, for its budget split and skips too
        SHARES.update(parse_shares(given["shares"]))
    if encoder_only(args.resume):  # a slim made from an export: no full decoder to train; the pruned one
        # learns from the true frames (the decoder stage without distillation) in the time of both
        SHARES.update(vae=0.0, decoder=SHARES["vae"] + SHARES["decoder"])
    bench = json.loads(Path(args.bench).read_text())
    budget = args.budget
    rows = bench["rows"]
    total = sum(SHARES.values())
    if args.part == "skips":  # ",stage" for each stage a share of 0 skips (appended to a --skip list)
        print("".join(f",{k}" for k in SKIPPABLE if SHARES[k] == 0))
        return
    if args.part:  # the budget of the first call (VAE and decoder) or of the second (the rest)
        first = budget * (SHARES["data"] + SHARES["vae"] + SHARES["decoder"]) / total
        print(round(first if args.part == "first" else budget - first, 2))
        return
    seconds = {k: 60 * budget * v / total for k, v in SHARES.items()}
    vae = rate(rows, stage="vae", gan=False) or 5.0
    dec = rate(rows, stage="decoder") or 5.0
    compiled = []
    for stage in ("base", "memory"):
        eager = rate(rows, stage=stage, batch=128, compile=False)
        fast = rate(rows, stage=stage, batch=128, compile=True)
        # compile where the bench measured it >= 15 % faster and the stage's share outlasts the cold
        # compile (COMPILE_S) by enough to win it back
        if eager and fast and fast > 1.15 * eager and seconds[stage] > COMPILE_S * fast / (fast - eager):
            compiled.append(stage)
    flags = {
        "shares": ",".join(f"{k}={v}" for k, v in SHARES.items()),
        "vae-batch": 32,
        "vae-gan-start": gan_start(resumed_step(args.resume, "vae"), 0.45 * vae * seconds["vae"]),
        "decoder-gan-start": gan_start(resumed_step(args.resume, "decoder"), 0.30 * dec * seconds["decoder"]),
        "gan-weight": GAN_WEIGHT,
        "gan-lambda-every": GAN_LAMBDA_EVERY,
        "gan-ramp": GAN_RAMP,
        "base-batch": 128,
        "base-lr": 4e-4,
        "memory-batch": 128,
        "memory-lr": 2e-4,
        "compile": ",".join(compiled) or "none",
        "own-history": OWN_HISTORY,
        "action-dropout": ACTION_DROPOUT,
        "memory-cooldown": MEMORY_COOLDOWN,
        "dmd-lr": DMD_LR,
        "dmd-critic-lr": DMD_CRITIC_LR,
        "dmd-rollout-reuse": DMD_ROLLOUT_REUSE,
        "dmd-regression": DMD_REGRESSION,
        "sharpen-gen-batch": SHARPEN_GEN_BATCH,
        "checkpoint-every": CHECKPOINT_EVERY,
        "checkpoint-minutes": CHECKPOINT_MINUTES,
    }
    # a flag of the session command (saved in pipeline.json by the data stage) wins: the plan's value of it would
    # override it on the `train all` command line (session 25 found --memory-lr so ignored)
    print(" ".join(f"--{k} {v}" for k, v in flags.items() if k not in given))


if __name__ == "__main__":
    main()
