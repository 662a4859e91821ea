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
