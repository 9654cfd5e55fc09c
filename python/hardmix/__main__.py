"""``python -m hardmix``: command-line entry points.

    python -m hardmix demo     class-incremental digits: no memory, experience
                               replay, hardmix (table + PNG; see --help)
    python -m hardmix eval     hardmix against the baselines on continual and
                               i.i.d. protocols, over seeds (see --help)
    python -m hardmix ops      run the random-number and margin ops and show
                               what they return
    python -m hardmix info     what this build is and which kernels are loaded
    python -m hardmix bench    time one policy step: native, reference, torch
                               (--quick, --json PATH; see --help)
"""

from __future__ import annotations

import argparse
import sys

import torch

import hardmix
from hardmix import rng


def _info() -> None:
    from hardmix import _build_info

    print(f"hardmix {hardmix.__version__}")
    print(f"  torch running:        {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    cuda = f", CUDA {_build_info.TORCH_CUDA_VERSION}" if _build_info.TORCH_CUDA_VERSION else ""
    print(f"  built against:        torch {_build_info.TORCH_VERSION}{cuda}")
    print(f"  CUDA kernels built:   {_build_info.WITH_CUDA}")
    print(f"  CUDA kernels loaded:  {hardmix.CUDA_KERNELS}")
    print(f"  GPU available:        {torch.cuda.is_available()}")
    for name in hardmix.ops.OPS:
        keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(f"hardmix::{name}", k)]
        print(f"  op hardmix::{name:<13} kernels: {', '.join(keys)}")


def _demo(seed: int, device: str) -> None:
    torch.set_printoptions(precision=4, sci_mode=False)
    print(f"hardmix {hardmix.__version__} demo on {device} (seed {seed})\n")

    print("1. Counter-based random numbers: a pure function of (seed, step, stream, index).")
    u = hardmix.uniform(6, seed=seed, step=0, stream=1, device=device)
    g = hardmix.gumbel(6, seed=seed, step=0, stream=1, device=device)
    print(f"   uniform_fill  step 0, stream 1, indices 0..5: {u.tolist()}")
    print(f"   gumbel_fill   same counters:                  {g.tolist()}")
    again = hardmix.uniform(3, seed=seed, step=0, stream=1, offset=3, device=device)
    print(f"   indices 3..5 drawn on their own:               {again.tolist()}")
    print(f"     same bits as above: {torch.equal(again, u[3:])}")
    key = rng.stream_key(seed, 0, 1)
    mirror = [rng.gumbel(key, i) for i in range(6)]
    print(f"   pure-Python mirror (hardmix.rng) equals the native op bit for bit: {g.cpu().tolist() == mirror}")
    big = hardmix.uniform(1_000_000, seed=seed, step=1, stream=1, device=device)
    gb = hardmix.gumbel(1_000_000, seed=seed, step=1, stream=1, device=device)
    print(
        f"   10^6 uniforms: mean {big.mean():.4f} (1/2), var {big.var():.4f} (1/12 = 0.0833), "
        f"min {big.min():.2e}, max 1 - {1 - big.max():.2e}"
    )
    print(
        f"   10^6 Gumbels:  mean {gb.mean():.4f} (Euler's 0.5772), var {gb.var():.4f} "
        f"(pi^2/6 = 1.6449)\n"
    )

    print("2. margin(logits, targets): true-class logit minus the largest other logit.")
    logits = torch.tensor(
        [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [5.0, 5.0, 1.0], [-1.0, 3.0, 0.0]], device=device
    )
    targets = torch.tensor([0, 1, 1, 0], device=device)
    print(f"   logits  {logits.tolist()}")
    print(f"   targets {targets.tolist()}")
    m = hardmix.margin(logits, targets)
    print(f"   margin  {m.tolist()}   (negative = misclassified, 0 = a tie)")
    for dtype in (torch.float16, torch.bfloat16):
        print(f"   as {str(dtype):<15} {hardmix.margin(logits.to(dtype), targets).tolist()}")
    try:
        hardmix.margin(logits, torch.tensor([0, 1, 3, 0], device=device))
    except RuntimeError as e:
        print(f"   bad input is refused: {str(e).splitlines()[0]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from hardmix import bench

        return bench.main(argv[1:])
    if argv[:1] == ["demo"]:
        from hardmix import demo

        return demo.demo(argv[1:])
    if argv[:1] == ["eval"]:
        from hardmix.evaluation import suite

        return suite.evaluate(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m hardmix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="class-incremental digits with and without hardmix (see: demo --help)")
    sub.add_parser("eval", help="the evaluation suite (see: eval --help)")
    ops = sub.add_parser("ops", help="run the random-number and margin ops and print what they return")
    ops.add_argument("--seed", type=int, default=0)
    ops.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sub.add_parser("info", help="describe this build")
    sub.add_parser("bench", help="time one policy step (see: python -m hardmix bench --help)")
    args = parser.parse_args(argv)
    if args.command == "ops":
        _demo(args.seed, args.device)
    elif args.command == "info":
        _info()
    return 0


if __name__ == "__main__":
    sys.exit(main())
