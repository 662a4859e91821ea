"""Sequence parallelism (spec §8): the shard arithmetic, and SP output == single-process output (gloo, 2 ranks),
applied directly and through RuntimeOptions(sequence_parallel=2)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dit_fixture import dit_inputs, random_dit

from world_model import parallel
from world_model.attention import AttentionKernel, attention_backends
from world_model.config import DiTConfig, tiny
from world_model.dit import MatrixGameDiT, reuse_conditioning
from world_model.parallel import SequenceShard, UlyssesAttention, apply_sequence_parallel, head_group_bounds
from world_model.runtime import RuntimeOptions, apply_runtime, bound_qk_inputs

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Shard arithmetic (pure)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "S", "P"), [(4, 4, 2), (3, 3, 2), (1, 1, 2), (19, 880, 7), (5, 6, 4), (2, 5, 8)])
def test_shards_cover_the_sequence_once_and_runs_stay_in_one_frame(T, S, P):
    L = T * S
    shards = [SequenceShard(L, S, r, P) for r in range(P)]
    Lc = shards[0].chunk
    assert Lc == math.ceil(L / P) and shards[0].padded == P * Lc >= L
    covered = torch.cat([torch.arange(s.start, s.start + s.valid) for s in shards])
    assert torch.equal(covered, torch.arange(L))  # every valid token once, in rank order
    assert sum(s.valid for s in shards) == L

    frame_of_token = torch.arange(L) // S
    full = torch.arange(L)[None, :, None].float()  # [1, L, 1]: token ids
    for s in shards:
        runs = s.run_frames()
        assert runs.shape == (Lc // s.run,) and Lc % s.run == 0
        # Every valid token's run carries that token's frame.
        token_run_frames = runs.repeat_interleave(s.run)[: s.valid]
        assert torch.equal(token_run_frames, frame_of_token[s.start : s.start + s.valid])
        # take() on the frames a chunk touches == take_full() on the whole sequence.
        f0, f1 = s.frame_range
        assert torch.equal(s.take(full[:, f0 * S : f1 * S]), s.take_full(full))
        expected = torch.zeros(1, Lc, 1)
        expected[0, : s.valid, 0] = torch.arange(s.start, s.start + s.valid).float()
        assert torch.equal(s.take_full(full), expected)  # zero padding after the valid tokens


def test_shard_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        SequenceShard(8, 4, 2, 2)
    with pytest.raises(ValueError, match="multiple of the tokens per frame"):
        SequenceShard(10, 4, 0, 2)
    s = SequenceShard(16, 4, 0, 2)
    with pytest.raises(ValueError, match="expected the tokens of frames"):
        s.take(torch.zeros(1, 5, 3))


def test_sequence_parallel_needs_torch_distributed_and_a_dit():
    assert not dist.is_initialized()
    model = MatrixGameDiT(tiny().dit)
    with pytest.raises(RuntimeError, match="init_process_group"):
        apply_sequence_parallel(model)
    with pytest.raises(TypeError, match="expected a MatrixGameDiT"):
        apply_sequence_parallel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        apply_runtime(model, RuntimeOptions(sequence_parallel=2))
    with pytest.raises(ValueError, match="compile=True with sequence_parallel"):
        RuntimeOptions(sequence_parallel=2, compile=True)
    # Nothing was changed by the refusals.
    assert all(type(m) is AttentionKernel for m in model.modules() if isinstance(m, AttentionKernel))
    assert not any(block._forward_pre_hooks for block in model.blocks)


# --------------------------------------------------------------------------------------------
# SP == single process, 2 gloo ranks on the CPU
# --------------------------------------------------------------------------------------------


def _three_head_config() -> DiTConfig:
    """dim 48, 3 heads (not a multiple of 2 ranks: heads padded to 4)."""
    cfg = tiny().dit
    action = dataclasses.replace(cfg.action_config, img_hidden_size=48)
    return dataclasses.replace(cfg, dim=48, num_heads=3, ffn_dim=96, action_config=action)


# (name, config, B, M, F, latent h, latent w, first chunk). Token grid = latent / 2.
CASES = [
    # 4 heads, L = 4 frames x 4 tokens = 16: even split, runs of whole frames, memory.
    ("even", tiny().dit, 2, 1, 3, 4, 4, False),
    # 3 heads (padded to 4), L = 3 x 3 = 9 tokens (padded to 10), runs of 1 token, no memory.
    ("odd_heads_tokens", _three_head_config(), 1, 0, 3, 2, 6, True),
    # 3 heads, L = 3 x 3 with memory, later chunk, batch 2.
    ("odd_memory", _three_head_config(), 2, 1, 2, 2, 6, False),
    # L = 1 token: rank 1 holds padding only.
    ("one_token", tiny().dit, 1, 0, 1, 2, 2, True),
]


def _worker(rank: int, world: int, init_file: str, case_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outputs = {}
        for name, state, cfg, inputs in torch.load(case_file, weights_only=False):
            model = MatrixGameDiT(cfg).eval()
            model.load_state_dict(state)
            with torch.no_grad():
                sp = apply_sequence_parallel(model)
                outputs[name] = model(**inputs)
                with reuse_conditioning(model):  # cached per-block camera modulation, sharded per block
                    model(**inputs)
                    outputs[name + "/cached"] = model(**inputs)
                bound_qk_inputs(model)  # set on the Ulysses kernels while applied ...
                sp.remove()
                # ... and handed back to the model's own kernels
                assert all(b.self_attn.attn.qk_rms_weights[0] is b.self_attn.norm_q.weight for b in model.blocks)
                outputs[name + "/unwrapped"] = model(**inputs)  # removed: the model is itself again
                assert not any(isinstance(m, UlyssesAttention) for m in model.modules())
                # The same through the runtime options, with a pinned attention backend.
                apply_runtime(model, RuntimeOptions(sequence_parallel=world, attention="math"))
                outputs[name + "/runtime"] = model(**inputs)
                kernels = {
                    n: (type(m).__name__, m.backend) for n, m in model.named_modules() if n in attention_backends(model)
                }
                outputs[name + "/kernels"] = kernels
                outputs[name + "/bounds"] = _bounds_through_ulysses(model, inputs)
        torch.save(outputs, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _bounds_through_ulysses(model: MatrixGameDiT, inputs: dict) -> dict:
    """With q/k bounded by their norms (``bound_qk_inputs``) and the Ulysses kernels on 'fa3_fp8': the bounds
    each rank's kernel hands to attend (recorded by a stand-in that attends with 'math', as the CPU has no FA3)."""
    for m in model.modules():
        if isinstance(m, UlyssesAttention):
            m.backend = "fa3_fp8"
    bound_qk_inputs(model)
    seen, real = [], parallel.attend

    def recording(q, k, v, *, backend=None, qk_bounds=None, **kw):
        seen.append((backend, qk_bounds, q.shape[2]))
        return real(q, k, v, backend="math", **kw)

    parallel.attend = recording
    try:
        out = model(**inputs)
    finally:
        parallel.attend = real
    norms = model.blocks[0].self_attn
    return {"out": out, "calls": seen, "q_weight": norms.norm_q.weight.clone(), "k_weight": norms.norm_k.weight.clone()}


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory):
    """Run every case once over 2 gloo ranks; returns (references, outputs of each rank)."""
    tmp = tmp_path_factory.mktemp("sp")
    cases, refs = [], {}
    for i, (name, cfg, B, M, F, h, w, first) in enumerate(CASES):
        model = random_dit(cfg, seed=i)
        inputs = dit_inputs(cfg, B, M, F, h, w, first_chunk=first, seed=100 + i)
        with torch.no_grad():
            refs[name] = model(**inputs)
        cases.append((name, model.state_dict(), cfg, inputs))
    torch.save(cases, tmp / "cases.pt")
    mp.spawn(_worker, args=(WORLD, str(tmp / "init"), str(tmp / "cases.pt"), str(tmp)), nprocs=WORLD, join=True)
    outs = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    return refs, outs


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_sequence_parallel_equals_single_process(sp_run, name):
    refs, outs = sp_run
    ref = refs[name]
    assert ref.abs().mean() > 1e-2  # the check below is not comparing zeros
    for rank, out in enumerate(outs):
        assert out[name].shape == ref.shape, f"rank {rank}"
        torch.testing.assert_close(out[name], ref, rtol=0, atol=1e-5, msg=f"rank {rank}, case {name}")
        torch.testing.assert_close(out[name + "/runtime"], ref, rtol=0, atol=1e-5, msg=f"rank {rank}, runtime")
        # the cached modulation is one GEMM over all tokens, sharded after, the uncached one a GEMM over the rank's
        # tokens: the same sums, but a BLAS may block them differently by row count (last bits; AMD EPYC, session 20)
        torch.testing.assert_close(out[name + "/cached"], out[name], rtol=0, atol=1e-6, msg=f"rank {rank}, cached")
        # With SP removed the model runs on its own (1 thread per rank here: reductions may differ in the last bit).
        torch.testing.assert_close(out[name + "/unwrapped"], ref, rtol=0, atol=1e-6)
        # RuntimeOptions put Ulysses kernels in every self-attention and the backend on every kernel.
        kernels = out[name + "/kernels"]
        self_attn = {n: k for n, k in kernels.items() if ".self_attn." in n}
        assert len(self_attn) == next(c[1] for c in CASES if c[0] == name).num_layers
        assert all(k == ("UlyssesAttention", "math") for k in self_attn.values())
        assert all(backend == "math" for _, backend in kernels.values())


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_sequence_parallel_fp8_attention_gets_each_rank_heads_bounds(sp_run, name):
    """Ulysses kernels take the q/k bounds of the layer they replace and hand attend those of the heads their rank
    holds between the all-to-alls (padding heads bounded by 1); the model's output is unchanged by passing them."""
    refs, outs = sp_run
    cfg = next(c[1] for c in CASES if c[0] == name)
    n, dh = cfg.num_heads, cfg.dim // cfg.num_heads
    per = -(-n // WORLD)
    for rank, out in enumerate(outs):
        rec = out[name + "/bounds"]
        torch.testing.assert_close(rec["out"], refs[name], rtol=0, atol=1e-5)
        assert len(rec["calls"]) == cfg.num_layers  # every self-attention went through the Ulysses kernel
        backend, (q_b, k_b), heads = rec["calls"][0]
        assert backend == "fa3_fp8" and heads == per and q_b.shape == k_b.shape == (per,)
        for weight, got in ((rec["q_weight"], q_b), (rec["k_weight"], k_b)):
            for i in range(per):
                h = rank * per + i
                want = 1.0 if h >= n else (cfg.dim**0.5) * 1.02 * float(weight[h * dh : (h + 1) * dh].abs().max())
                assert float(got[i]) == pytest.approx(want, rel=1e-6), f"rank {rank}, head {h}"


def test_head_group_bounds_split_heads_as_the_all_to_all_does():
    """3 heads over 2 ranks: rank 0 holds heads 0-1, rank 1 head 2 and a zero padding head (bound 1)."""
    q, k = torch.tensor([2.0, 3.0, 5.0]), torch.tensor([7.0, 11.0, 13.0])
    assert [t.tolist() for t in head_group_bounds((q, k), 2, 0)] == [[2.0, 3.0], [7.0, 11.0]]
    assert [t.tolist() for t in head_group_bounds((q, k), 2, 1)] == [[5.0, 1.0], [13.0, 1.0]]
    assert [t.tolist() for t in head_group_bounds((q, k), 1, 0)] == [q.tolist(), k.tolist()]


def test_case_geometry_exercises_padding():
    """The cases above really pad heads and tokens and leave a rank with padding only."""
    geoms = {}
    for name, cfg, _, M, F, h, w, _ in CASES:
        S = (h // 2) * (w // 2)
        geoms[name] = (cfg.num_heads % WORLD, (M + F) * S % WORLD, SequenceShard((M + F) * S, S, 1, WORLD).valid)
    assert geoms["even"] == (0, 0, 8)
    assert geoms["odd_heads_tokens"][:2] == (1, 1)
    assert geoms["odd_memory"][:2] == (1, 1)
    assert geoms["one_token"][2] == 0


def test_bench_script_runs_under_torchrun(tmp_path):
    """bench/multigpu.py --tiny: 2 gloo ranks via torchrun, JSON with the agreement fields."""
    out = tmp_path / "mg.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    cmd += [str(ROOT / "bench" / "multigpu.py"), "--tiny", "--iters", "1", "--warmup", "0", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == WORLD and r["tokens"] == 19 * 16
    assert r["ranks_agree"] is True
    assert r["max_abs_diff"] < 1e-5 and all(d["ref_max_abs"] > 1e-2 for d in r["vs_single_gpu"])
    assert r["seconds_per_chunk"] > 0 and r["single_gpu_seconds_per_chunk"] > 0


def _nccl_run(tmp_path: Path, world: int) -> list[dict]:
    cfg = _three_head_config()  # heads padded on 2 ranks; 5 x 3 x 3 = 45 tokens padded to 46
    model = random_dit(cfg, seed=7)
    inputs = dit_inputs(cfg, 2, 2, 3, 6, 6, seed=8)
    torch.save([("bf16", model.state_dict(), cfg, inputs)], tmp_path / "cases.pt")
    args = (world, str(tmp_path / "init"), str(tmp_path / "cases.pt"), str(tmp_path))
    mp.spawn(_nccl_worker, args=args, nprocs=world)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for out in outs:
        assert out["bf16/unwrapped"].abs().mean() > 1e-2
        torch.testing.assert_close(out["bf16"], out["bf16/unwrapped"], rtol=0, atol=2e-2)
    return outs


@pytest.mark.gpu
def test_sequence_parallel_nccl_one_rank_bf16(tmp_path):
    """1 GPU (NCCL, bf16): the SP path (collectives of one rank) matches the plain model."""
    _nccl_run(tmp_path, 1)


@pytest.mark.multigpu
def test_sequence_parallel_nccl_bf16_matches_one_gpu(tmp_path):
    """2 GPUs (NCCL, bf16): SP output close to the single-GPU output; both ranks return the same."""
    outs = _nccl_run(tmp_path, WORLD)
    torch.testing.assert_close(outs[0]["bf16"], outs[1]["bf16"], rtol=0, atol=0)


def _nccl_worker(rank: int, world: int, init_file: str, case_file: str, out_dir: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outputs = {}
        for name, state, cfg, inputs in torch.load(case_file, weights_only=False):
            model = MatrixGameDiT(cfg)
            model.load_state_dict(state)
            model = model.to(f"cuda:{rank}", torch.bfloat16).eval()
            dev = {k: None if v is None else v.to(f"cuda:{rank}") for k, v in inputs.items()}
            with torch.no_grad():
                sp = apply_sequence_parallel(model)
                outputs[name] = model(**dev).cpu()
                sp.remove()
                outputs[name + "/unwrapped"] = model(**dev).cpu()
        torch.save(outputs, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
