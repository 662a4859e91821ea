"""world_model.train.grow: blocks appended to a trained DiT start as the identity (the output unchanged), can
learn (gradients reach them), and a grown export loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dit_fixture import dit_inputs, random_dit

from world_model.config import tiny
from world_model.train.grow import grow_dit, grow_export

EMBEDDED = Path(__file__).resolve().parents[1] / "world_model" / "assets" / "embedded"


@pytest.mark.parametrize("memory", [True, False])
def test_appended_blocks_leave_the_output_unchanged(memory):
    cfg = tiny().dit.replace(use_memory=memory)
    dit = random_dit(cfg, seed=3).eval()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    inputs = dit_inputs(cfg, 2, 1 if memory else 0, 3, 4, 4, seed=5)
    grown = grow_dit(dit, 3).eval()
    assert grown.cfg.num_layers == cfg.num_layers + 3 and len(grown.blocks) == cfg.num_layers + 3
    assert all(torch.equal(v, dit.state_dict()[k]) for k, v in before.items())  # the DiT itself untouched
    with torch.no_grad():
        ref, out = dit(**inputs), grown(**inputs)
    assert ref.abs().mean() > 1e-2
    # with memory each block's residual becomes LN3(x) = LN(x), which the head's LayerNorm takes as it takes x
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 if memory else 0)
    new = grown.blocks[cfg.num_layers]
    assert new.action_model is None and torch.count_nonzero(new.ffn[2].weight) == 0
    torch.testing.assert_close(new.self_attn.q.weight, dit.blocks[-1].self_attn.q.weight)  # a copy of the last block


def test_appended_blocks_learn():
    cfg = tiny().dit
    grown = grow_dit(random_dit(cfg, seed=1), 1).train()
    grown(**dit_inputs(cfg, 1, 1, 2, 4, 4)).square().mean().backward()
    new = grown.blocks[-1]
    for layer in (new.self_attn.o, new.cross_attn.o, new.ffn[2], new.cam_scale_layer):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="add"):
        grow_dit(grown, 0)


@pytest.mark.slow
def test_grown_embedded_export_loads_and_keeps_its_frames(tmp_path):
    """The shipped model grown by two blocks: two more blocks in its config, its old weights as they were, the same
    window."""
    from world_model.train.export import read_exported

    shipped = json.loads((EMBEDDED / "config.json").read_text())["dit"]["num_layers"]
    out = grow_export(EMBEDDED, 2, tmp_path / "grown")
    assert json.loads((out / "config.json").read_text())["dit"]["num_layers"] == shipped + 2
    assert (out / "default_image.png").exists() and "Grown from" in (out / "README.md").read_text()
    cfg, dit, _ = read_exported(EMBEDDED)
    _, grown, _ = read_exported(out)
    inputs = dit_inputs(cfg.dit, 1, 1, 2, 4, 4)
    with torch.no_grad():
        for p in dit.parameters():  # the grown export stores bf16; the shipped DiT is int8 (since session 19)
            p.copy_(p.bfloat16().float())
        torch.testing.assert_close(grown(**inputs), dit(**inputs), rtol=0, atol=1e-4)


def test_pipeline_dit_layers_sets_the_runs_dit(tmp_path):
    """--dit-layers: the run's config has that many blocks (a grown model's carried weights load into it)."""
    from world_model.train.pipeline import PipelineOptions, run_config

    opts = PipelineOptions(config="tiny", dit_layers=5)
    cfg = run_config(tmp_path, opts)
    assert cfg.dit.num_layers == 5
    grown = grow_dit(random_dit(tiny().dit), 3)
    from world_model.dit import MatrixGameDiT

    MatrixGameDiT(cfg.dit).load_state_dict(grown.state_dict())  # strict: the same keys and shapes
    assert run_config(tmp_path, PipelineOptions(config="tiny")).dit.num_layers == tiny().dit.num_layers
    with pytest.raises(ValueError, match="dit_layers"):
        PipelineOptions(dit_layers=-1)


def test_grow_checkpoint_rewrites_a_slimmed_stage_in_place(tmp_path):
    """A slimmed DiT stage (stage/ema/model, bf16) grown where it lies: the same step, the new blocks' keys, the same
    window output once loaded into the grown config; a folder without one refuses."""
    from world_model.dit import MatrixGameDiT
    from world_model.train.checkpoints import latest_checkpoint, load_latest, save_checkpoint
    from world_model.train.grow import grow_checkpoint

    cfg = tiny().dit
    dit = random_dit(cfg, seed=2).to(torch.bfloat16).float().eval()  # bf16-exact weights
    slim = {"stage": {"ema": {"model": {k: v.bfloat16() for k, v in dit.state_dict().items()}}}}
    save_checkpoint(slim, tmp_path / "base", 7)
    assert grow_checkpoint(tmp_path / "base", cfg, 2) == cfg.num_layers + 2
    assert latest_checkpoint(tmp_path / "base").name == "step-000000007"
    weights = load_latest(tmp_path / "base")["stage"]["ema"]["model"]
    grown = MatrixGameDiT(cfg.replace(num_layers=cfg.num_layers + 2))
    grown.load_state_dict(weights)
    inputs = dit_inputs(cfg, 1, 1, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(**inputs), dit(**inputs), rtol=0, atol=1e-5)
    # grown again (session 19's case): the checkpoint's own block count, not the preset's
    assert grow_checkpoint(tmp_path / "base", cfg, 1) == cfg.num_layers + 3
    assert f"blocks.{cfg.num_layers + 2}.modulation" in load_latest(tmp_path / "base")["stage"]["ema"]["model"]
    with pytest.raises(ValueError, match="no slimmed DiT"):
        grow_checkpoint(tmp_path / "nothing", cfg, 1)


def test_export_int8_halves_the_dits_bytes_and_keeps_the_rest(tmp_path):
    """`export int8`: the folder's DiT stored as int8 with a scale per row (what a grown model ships as, past 40 MB
    in bf16); it loads, its window output stays close, the VAE file and the config are the folder's own."""
    from world_model.train.export import export_model, exported_size_bytes, read_exported
    from world_model.train.export import main as export_main
    from world_model.vae import WanVAE

    cfg = tiny()
    dit = random_dit(cfg.dit.replace(dim=64, ffn_dim=128, action_config=None), seed=4)
    cfg = cfg.replace(dit=dit.cfg)
    src = export_model(tmp_path / "m", cfg, dit, WanVAE(cfg.vae))
    export_main(["int8", "--model", str(src), "--out", str(tmp_path / "q")])
    q = tmp_path / "q"
    assert (q / "vae.safetensors").read_bytes() == (src / "vae.safetensors").read_bytes()
    assert (q / "config.json").read_text() == (src / "config.json").read_text()
    dit_bytes = lambda f: exported_size_bytes(f / "base_distilled_model")  # noqa: E731
    assert dit_bytes(q) < 0.6 * dit_bytes(src)
    _, a, _ = read_exported(src)
    _, b, _ = read_exported(q)
    inputs = dit_inputs(cfg.dit, 1, 1, 2, 4, 4)
    with torch.no_grad():
        ra, rb = a(**inputs), b(**inputs)
    assert 0 < float((ra - rb).norm() / ra.norm()) < 0.03


def test_grow_refuses_the_other_sources_flags(tmp_path, capsys):
    from world_model.train.grow import main

    for argv, said in (
        (["--checkpoint", str(tmp_path / "base"), "--add-blocks", "1", "--out", str(tmp_path / "o")], "in place"),
        (["--model", "default", "--add-blocks", "1", "--out", str(tmp_path / "o"), "--config", "tiny"], "--config"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
