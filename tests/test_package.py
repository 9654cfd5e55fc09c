"""Loading, registration and the demo command."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hardmix
from hardmix import _build_info, _load


def test_failed_load_names_file_torch_and_rebuild(tmp_path):
    bogus = tmp_path / "libhardmix_cuda.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(ImportError) as info:
        _load.load_library(bogus)
    text = str(info.value)
    assert str(bogus) in text
    assert f"torch found: {torch.__version__}" in text
    assert f"hardmix was built against: torch {_build_info.TORCH_VERSION}" in text
    assert "pip install --no-build-isolation" in text


def test_every_op_has_a_cpu_kernel_and_a_fake():
    for name in hardmix.ops.OPS:
        qualname = f"hardmix::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), qualname
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"), qualname


def test_every_declared_op_is_listed():
    """OPS (used by CI's CUDA registration check) must name every schema."""
    source = (Path(__file__).parents[1] / "csrc/ops/library.cpp").read_text()
    declared = set(re.findall(r'm\.def\(\s*"(\w+)\(', source))
    assert declared == set(hardmix.ops.OPS)


def test_cuda_kernels_loaded_exactly_when_built_and_cuda_torch():
    assert hardmix.CUDA_KERNELS == bool(_build_info.WITH_CUDA and torch.version.cuda)
    for name in hardmix.ops.OPS:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"hardmix::{name}", "CUDA")
        assert has == (hardmix.CUDA_KERNELS and name in hardmix.ops.CUDA_OPS), name


def test_ops_demo_runs_and_mirror_agrees():
    proc = subprocess.run(
        [sys.executable, "-m", "hardmix", "ops", "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "equals the native op bit for bit: True" in proc.stdout
    assert "same bits as above: True" in proc.stdout
    assert "margin  [1.5, 0.10000000894069672, 0.0, -4.0]" in proc.stdout
