"""How the pruned decoder's distillation starts: from the full decoder's first channels (``load_pruned``, what the
decoder stage does) against a random decoder into which only the tensors of equal shape were copied (before session
26). Both arms distil from one VAE stage checkpoint on the same clips of freshly recorded episodes (ViZDoom), the
same seed; held-out PSNR of the pruned decoder every ``--every`` steps. CPU-sized by default.

    python bench/decoder_init.py --vae-tar bench/gpu/state/vae_s26_step7917_bf16.tar --steps 100 \\
        --json bench/results/decoder_init_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _autoencoder_bench import add_options, clips, episodes, vae_checkpoint


def run(arm: str, teacher, vcfg, train_eps, held_eps, args) -> list[dict]:
    from world_model.train.autoencoder import DecoderStage, VAEOptions, is_decoder_side
    from world_model.vae import WanVAE

    opts = VAEOptions(batch_size=args.batch, clip_frames=args.clip_frames, eval_clips=args.eval_clips, amp=False)
    torch.manual_seed(args.seed)
    student = WanVAE(vcfg)
    train, held = clips(train_eps, opts.clip_frames, args.seed), clips(held_eps, opts.clip_frames, 0)
    stage = DecoderStage(teacher, student, train, held, opts)
    if arm == "copy":  # the old init: a random decoder, only the tensors of the full one's shape copied
        torch.manual_seed(args.seed)
        fresh = dict(WanVAE(vcfg).named_parameters())
        full = teacher.state_dict()
        with torch.no_grad():
            for name, p in student.named_parameters():
                if is_decoder_side(name) and p.shape != full[name].shape:
                    p.copy_(fresh[name])
    rows, t0 = [{"step": 0, **stage.evaluate()}], time.perf_counter()
    print(arm, rows[-1], flush=True)
    for step in range(1, args.steps + 1):
        metrics = stage.train_step(step)
        if step % args.every == 0 or step == args.steps:
            rows.append({"step": step, "distil": float(metrics["distil"]), **stage.evaluate()})
            rows[-1]["seconds"] = time.perf_counter() - t0
            print(arm, rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(p, steps=100, every=25)
    p.add_argument("--arms", default="pruned,copy")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from world_model.train.autoencoder import identity_stats, load_weights
    from world_model.train.pipeline import PipelineOptions, preset_config
    from world_model.vae import WanVAE

    vcfg = identity_stats(preset_config(PipelineOptions()).vae)
    teacher = WanVAE(vcfg.replace(pruning_rate=0.0))
    state = vae_checkpoint(args.vae_tar)
    if load_weights(teacher, {k: v.float() for k, v in state["stage"]["vae"].items()}):
        raise SystemExit(f"{args.vae_tar}'s VAE is not the embedded preset's full VAE")
    train_eps, held_eps = episodes(args.episodes)
    curves = {arm: run(arm, teacher, vcfg, train_eps, held_eps, args) for arm in args.arms.split(",")}
    print(f"{'step':>6} " + " ".join(f"{arm + ' PSNR':>12}" for arm in curves))
    for i, row in enumerate(next(iter(curves.values()))):
        print(f"{row['step']:>6} " + " ".join(f"{c[i]['psnr_pruned']:>12.2f}" for c in curves.values()))
    print(f"teacher (full decoder): {row['psnr_full']:.2f} dB")
    if args.json:
        out = {"benchmark": "decoder_init", "vae_tar": args.vae_tar, **vars(args), "curves": curves}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
