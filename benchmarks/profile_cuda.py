"""Where a training step's time goes with ReplaySampler fed GPU tensors
(profile only; needs a CUDA GPU and torchvision):

    python benchmarks/profile_cuda.py > out/profile-cuda.txt

cProfile of bench_cuda.bench_loop (60 steps, after its 30 warm-up steps) for
the MLP and ResNet-18 at B = 256, variants "host" (the default) and "sync",
then torch.profiler over ResNet-18 "host" (20 steps + 30 warm-up): where the
host time of a step goes, and the GPU time ("Self CUDA time total") it keeps
the device busy for. No anchor: a profile, not a benchmark; bench_cuda.py has
the figures against the plain loop.
"""
import cProfile, pstats, sys, io
sys.path.insert(0, "benchmarks")
import bench_cuda as bc

dev = "cuda"
N, R, _, C = bc.SHAPES[0]
X, Y = bc._data(N, C, dev)
for model, B in (("mlp", 256), ("resnet18", 256)):
    for variant in ("host", "sync"):
        # warm + cProfile over 60 steps
        pr = cProfile.Profile()
        pr.enable()
        rec = bc.bench_loop(model, variant, N, R, B, C, dev, X, Y, 60, 1)
        pr.disable()
        print("=====", model, variant, "step_us", round(rec["step_us"]), "sampler_host_us", round(rec["sampler_host_us"]))
        s = io.StringIO()
        ps = pstats.Stats(pr, stream=s).sort_stats("tottime")
        ps.print_stats(25)
        print("\n".join(l for l in s.getvalue().splitlines() if l.strip())[:6000])
# torch profiler: CUDA runtime calls in the host variant
from torch.profiler import profile, ProfilerActivity
for variant in ("host",):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        bc.bench_loop("resnet18", variant, N, R, 256, C, dev, X, Y, 20, 1)
    t = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    print("===== torch.profiler resnet18", variant)
    print(t)
