"""Test configuration: hardware markers skip themselves only when the hardware is absent."""

from __future__ import annotations

import os

import pytest
import torch

# Keep CPU tests fast and deterministic on small machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite's numbers do not depend on the machine's CPU: default runtimes are fp32 (a user's default is bf16 where
# the CPU has bf16 instructions, world_model.runtime.default_cpu_dtype; tests/test_runtime.py covers that choice).
os.environ["MG3_CPU_DTYPE"] = "float32"
# ... and float GEMMs (a user's fp32 default takes int8 GEMMs for the embedded model where the CPU has int8 dot
# products, RuntimeOptions.quantize='auto'; tests/test_runtime.py covers that choice)
os.environ["MG3_CPU_QUANTIZE"] = "none"


def pytest_collection_modifyitems(config, items):
    n_gpu = torch.cuda.device_count()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none present")
    skip_multi = pytest.mark.skip(reason=f"needs >= 2 CUDA GPUs; {n_gpu} present")
    for item in items:
        if "gpu" in item.keywords and n_gpu < 1:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and n_gpu < 2:
            item.add_marker(skip_multi)


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_a_temporary_folder(tmp_path_factory):
    """Stable-Baselines3 makes a folder under /tmp for every learn() call unless $SB3_LOGDIR names one."""
    os.environ.setdefault("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
