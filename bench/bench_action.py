"""Time one release-size action module (spec §4.3) on a GPU: bf16 weights, fp32 residual stream.

Shapes of a later clip: 5 memory + 14 window latents on the 22x40 token grid (16720 tokens),
56 action frames. The DiT runs 15 such modules per forward.

    python bench/bench_action.py [--batch 1 2 4] [--backend auto] [--json out.json]

Prints a table (ms per call per batch size, and the batch-vs-single max difference) and writes JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from world_model.action import ActionModule
from world_model.attention import set_attention_backend
from world_model.config import mg3_5b


def _time_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", default="bench_action.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_action.py needs a CUDA GPU")
    torch.manual_seed(0)
    cfg = mg3_5b().dit.action_config
    mod = ActionModule(cfg).to("cuda", torch.bfloat16)
    set_attention_backend(mod, args.backend)
    with torch.no_grad():  # the zero-init projections would make the module an identity
        mod.proj_mouse.weight.normal_(std=0.02)
        mod.proj_keyboard.weight.normal_(std=0.02)
    grid, M, nf = (19, 22, 40), 5, 56
    rows = []
    for B in args.batch:
        x = torch.randn(B, 19 * 22 * 40, cfg.img_hidden_size, device="cuda")
        mouse = 0.1 * torch.randn(B, nf, 2, device="cuda")
        keyboard = (torch.rand(B, nf, 6, device="cuda") > 0.5).float()
        with torch.inference_mode():
            ms = _time_ms(lambda x=x, m=mouse, k=keyboard: mod(x, grid, m, k, M), args.iters)
            out = mod(x, grid, mouse, keyboard, M)
            single = mod(x[-1:], grid, mouse[-1:], keyboard[-1:], M)
            diff = (out[-1:] - single).abs().max().item()
        rows.append({"batch": B, "ms": ms, "ms_per_item": ms / B, "batch_vs_single_max_abs": diff})
    print(f"{torch.cuda.get_device_name()}  backend={args.backend}  tokens/item={19 * 22 * 40}")
    print(f"{'batch':>5} {'ms':>9} {'ms/item':>9} {'|batch-single|':>15}")
    for r in rows:
        print(f"{r['batch']:>5} {r['ms']:>9.3f} {r['ms_per_item']:>9.3f} {r['batch_vs_single_max_abs']:>15.3e}")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "backend": args.backend, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
