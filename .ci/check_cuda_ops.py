"""CI check: this build has CUDA kernels, they loaded, and every op listed in
hardmix.ops.CUDA_OPS (all but the sharded table's, CPU-only) has one registered
with the dispatcher (no GPU needed)."""

import sys

import torch

import hardmix
from hardmix import _build_info

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); hardmix built against torch {_build_info.TORCH_VERSION}")
problems = []
if not _build_info.WITH_CUDA:
    problems.append("this build has no CUDA library (HARDMIX_CUDA=ON should have made one)")
if not hardmix.CUDA_KERNELS:
    problems.append("the CUDA library was not loaded")
for name in hardmix.ops.OPS:
    want = ("CPU", "CUDA", "Meta") if name in hardmix.ops.CUDA_OPS else ("CPU", "Meta")
    has = {key: torch._C._dispatch_has_kernel_for_dispatch_key(f"hardmix::{name}", key) for key in ("CPU", "CUDA", "Meta")}
    print(f"  hardmix::{name:<14} " + "  ".join(f"{k}: {'yes' if v else 'no'}" for k, v in has.items()))
    problems += [f"hardmix::{name} has no {k} kernel" for k in want if not has[k]]
    if name not in hardmix.ops.CUDA_OPS and has["CUDA"]:
        problems.append(f"hardmix::{name} has a CUDA kernel but is not listed in CUDA_OPS")
for p in problems:
    print(f"FAIL: {p}")
sys.exit(1 if problems else 0)
