"""Model folders: every file goes through the strict checks and every error names its file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from world_model.checkpoint import CheckpointError
from world_model.config import tiny
from world_model.model import load_world_model, random_world_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported as the training pipeline writes it."""
    from world_model.train.export import export_model

    m = random_world_model(tiny(16, 16))
    folder = tmp_path_factory.mktemp("export") / "model"
    export_model(folder, m.config, m.dit, m.vae, dtype=torch.float32)
    return folder


@pytest.fixture
def folder(exported, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(exported, out)
    return out


def test_exported_folder_loads(folder):
    m = load_world_model(str(folder))
    assert m.config.stream.height == 16


def _edit_config(folder, fn):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_corrupt_config_names_the_file(folder):
    (folder / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_world_model(str(folder))


def test_config_without_stream_is_an_error(folder):
    _edit_config(folder, lambda d: d.pop("stream"))
    with pytest.raises(CheckpointError, match=r"config\.json lacks the sections \['stream'\]"):
        load_world_model(str(folder))


def test_invalid_config_value_names_the_file(folder):
    _edit_config(folder, lambda d: d["stream"].update(height=17))
    with pytest.raises(CheckpointError, match=r"config\.json holds an invalid model config"):
        load_world_model(str(folder))


@pytest.mark.parametrize("fault", ["missing", "extra", "shape", "nan"])
def test_bad_vae_weights_are_refused_naming_the_file(folder, fault):
    path = folder / "vae.safetensors"
    sd = load_file(str(path))
    key = sorted(k for k in sd if sd[k].ndim > 1)[0]
    if fault == "missing":
        sd.pop(key)
    elif fault == "extra":
        sd["decoder.extra.weight"] = torch.zeros(2)
    elif fault == "shape":
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    else:
        sd[key] = sd[key].clone()
        sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(path))
    want = {"missing": "missing keys", "extra": "unexpected keys", "shape": "shape mismatch", "nan": "NaN or infinity"}
    with pytest.raises(CheckpointError, match=want[fault]) as err:
        load_world_model(str(folder))
    assert "vae.safetensors" in str(err.value)


def test_non_finite_dit_weights_are_refused(folder):
    shard = sorted(folder.rglob("diffusion_pytorch_model*.safetensors"))[0]
    sd = load_file(str(shard))
    key = next(k for k in sd if sd[k].is_floating_point())
    sd[key] = sd[key].clone()
    sd[key].view(-1)[-1] = float("inf")
    save_file(sd, str(shard))
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        load_world_model(str(folder))


# --------------------------------------------------------------------------------------------
# Two experts in one folder (world_model.train.export.combine_experts)
# --------------------------------------------------------------------------------------------


def _second_export(exported, tmp_path, seed=1):
    """Another tiny export with the same geometry and other weights (a 'student')."""
    from world_model.train.export import export_model

    m = random_world_model(tiny(16, 16), seed=seed)
    return export_model(tmp_path / "low", m.config, m.dit, m.vae, dtype=torch.float32)


def test_two_experts_combine_into_one_folder_that_switches_at_the_boundary(exported, tmp_path):
    from world_model.moe import MoEDiT
    from world_model.train.export import combine_experts, exported_size_bytes
    from world_model.train.slim import slim_from_export

    low = _second_export(exported, tmp_path)
    out = combine_experts(exported, low, tmp_path / "moe", boundary=0.8)
    assert (out / "high_noise_model").is_dir() and (out / "low_noise_model").is_dir()
    assert not (out / "base_distilled_model").exists() and not (tmp_path / "moe.writing").exists()
    m = load_world_model(str(out))
    assert isinstance(m.dit, MoEDiT) and m.config.moe.boundary == 0.8 and m.dit.boundary_timestep == 800
    single_high, single_low = load_world_model(str(exported)), load_world_model(str(low))
    for expert, ref in ((m.dit.high_noise, single_high.dit), (m.dit.low_noise, single_low.dit)):
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(expert.state_dict()[k], v.to(torch.float32).bfloat16().float(), msg=k)
    # the sampler's steps go to the expert the boundary names: 999 and 899 high, 749 and 499 low
    calls = []
    for name in ("high_noise", "low_noise"):
        getattr(m.dit, name).register_forward_pre_hook(lambda mod, args, name=name: calls.append(name))
    from mg3_env import MatrixGameEnv

    env = MatrixGameEnv(model=m.with_sampler(num_steps=4, shift=3.0))
    env.reset(seed=0)
    assert calls == ["high_noise", "high_noise", "low_noise", "low_noise"]
    env.close()
    with pytest.raises(ValueError, match="no many-step teacher"):
        load_world_model(str(out), variant="base")
    # int8: both experts in about half the bytes of bf16, and close to them
    out8 = combine_experts(exported, low, tmp_path / "moe8", boundary=0.8, int8=True)
    assert exported_size_bytes(out8) < 0.75 * exported_size_bytes(out)
    m8 = load_world_model(str(out8))
    for k, v in m.dit.state_dict().items():
        w = m8.dit.state_dict()[k]
        assert (w - v).abs().max() <= v.abs().max() / 127 + 1e-6, k
    # a slim from it: the high-noise expert is the base, the low-noise one the student
    base = slim_from_export(out, tmp_path / "slim")
    student = slim_from_export(out, tmp_path / "slim_student", dit_as="student")
    assert (base / "base").is_dir() and (student / "student").is_dir()


def test_combining_experts_refuses_what_cannot_share_a_stream(exported, tmp_path):
    from world_model.train.export import combine_experts, export_model

    other = random_world_model(tiny(32, 32))
    far = export_model(tmp_path / "far", other.config, other.dit, other.vae, dtype=torch.float32)
    with pytest.raises(ValueError, match="frames or latents"):
        combine_experts(exported, far, tmp_path / "bad", boundary=0.8)
    with pytest.raises(Exception, match="boundary"):
        combine_experts(exported, exported, tmp_path / "bad", boundary=1.5)
    assert not (tmp_path / "bad").exists()
    low = _second_export(exported, tmp_path)
    moe = combine_experts(exported, low, tmp_path / "moe", boundary=0.8)
    with pytest.raises(ValueError, match="holds two experts already"):
        combine_experts(moe, low, tmp_path / "bad", boundary=0.8)
