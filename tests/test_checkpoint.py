import pytest
import torch
from safetensors.torch import save_file

from world_model.checkpoint import CheckpointError, assign_state_dict, read_safetensors, read_torch_file


def _module():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_assign_onto_meta_module(tmp_path):
    src = _module()
    f = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(f))
    with torch.device("meta"):
        dst = _module()
    assign_state_dict(dst, read_safetensors(f), f)
    x = torch.randn(5, 3)
    torch.testing.assert_close(dst(x), src(x))


def test_errors_name_file_keys_and_shapes(tmp_path):
    sd = _module().state_dict()
    bad = dict(sd)
    bad.pop("0.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as e:
        assign_state_dict(_module(), bad, "some/file.safetensors")
    msg = str(e.value)
    assert "some/file.safetensors" in msg and "missing keys: 0.bias" in msg
    assert "unexpected keys: extra.weight" in msg and "1.weight: checkpoint (3, 3), model (2, 4)" in msg


def test_truncated_and_missing_files(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file(_module().state_dict(), str(f))
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_safetensors(f)
    p = tmp_path / "w.pth"
    torch.save({"state_dict": {"gen_model": _module().state_dict()}}, p)
    assert set(read_torch_file(p, inner=("state_dict", "gen_model"))) == set(_module().state_dict())
    with pytest.raises(CheckpointError, match="expected a 'model' entry"):
        read_torch_file(p, inner=("model",))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_file(p)
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        read_torch_file(tmp_path / "nope.pth")
