"""The engine with its state on a GPU, against the CPU engine and against the
training step it must keep pace with.

    python benchmarks/bench_cuda.py --json out/bench-cuda.json

Needs a CUDA GPU (with ``--device cpu`` it runs the CPU rows alone, to check
the script). Three groups, all in one process, medians:

- ``engine``: one policy step (update of B examples with logits, then the
  replay draw of m) on the CPU engine (1 intra-op thread, then all) and on
  the CUDA engine. CUDA: ``update_us`` is the device time of the step (CUDA
  events on the engine's stream around it, nothing else queued),
  ``enqueue_us`` the host time of the update() call, ``draw_us`` the host
  time of the draw (it waits for its kernel and copies m indices back).
- ``train``: one training step (forward, backward, SGD) of two reference
  models on the GPU: an MLP (3072-1024-1024-10) and a ResNet-18 (CIFAR-sized
  inputs), batch B = 256, and ResNet-18 at B = 1024 (GPU-bound), fp32.
- ``loop``: the quickstart loop over GPU-resident data, per step (total time
  of K steps / K, after warm-up), for each model: ``plain`` (random batches,
  no sampler); ReplaySampler (replay_lag 20) fed the GPU tensors with
  ``host`` (the default ``state_device="cpu"``: the state on the host, the
  inputs copied there asynchronously) or ``gpu-state``
  (``state_device="cuda"``: the state on the GPU); ``sync`` (the sampler fed
  ``losses.cpu()`` etc. by the loop: one wait for the GPU per step).
  ``sampler_host_us``: host time spent inside the sampler's calls per step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import hardmix
from hardmix.bench import batches_forever

SHAPES = [  # (N, R, B, C)
    (10**5, 8192, 256, 10),
    (10**6, 65536, 1024, 100),
]
RHO = 0.25
LOOPS = [("mlp", 256, 100), ("resnet18", 256, 100), ("resnet18", 1024, 40)]  # (model, B, % of --loop-steps)


def _inputs(N, B, C, steps, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randperm(N, generator=g)[:B] for _ in range(steps)]
    losses = [3 * torch.rand(B, generator=g) for _ in range(steps)]
    logits = [torch.randn(B, C, generator=g) for _ in range(steps)]
    targets = [torch.randint(0, C, (B,), generator=g) for _ in range(steps)]
    move = (lambda xs: [x.to(device) for x in xs])
    return idx, move(losses), move(logits), move(targets)


def bench_engine(device: str, N: int, R: int, B: int, C: int, steps: int, threads: int | None) -> dict:
    m = hardmix.schedules.replay_count(RHO, B)
    cfg = hardmix.PolicyConfig(num_examples=N, capacity=R, seed=0, num_classes=C)
    eng = hardmix.Engine(cfg, device=None if device == "cpu" else device)
    warm = max(20, 2 * R // B)  # the reservoir full and turning over
    idx, losses, logits, targets = _inputs(N, B, C, warm + steps, device)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    enq, upd, drw = [], [], []
    cuda = device != "cpu"
    try:
        for k in range(warm + steps):
            nxt = idx[(k + 1) % len(idx)][: B - m]
            if cuda:
                torch.cuda.synchronize()
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                with eng.on_stream():
                    e0.record()
            t0 = time.perf_counter()
            eng.update(idx[k], losses[k], logits=logits[k], targets=targets[k])
            t1 = time.perf_counter()
            if cuda:
                with eng.on_stream():
                    e1.record()
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            eng.draw(m, exclude=nxt)
            t3 = time.perf_counter()
            if k >= warm:
                enq.append((t1 - t0) * 1e6)
                upd.append(e0.elapsed_time(e1) * 1e3 if cuda else (t1 - t0) * 1e6)
                drw.append((t3 - t2) * 1e6)
    finally:
        torch.set_num_threads(old)
    med = statistics.median
    return dict(group="engine", device=device, threads=threads or old, N=N, R=R, B=B, C=C, m=m,
                steps=steps, update_us=med(upd), enqueue_us=med(enq), draw_us=med(drw),
                step_us=med(upd) + med(drw), size=eng.size)


class MLP(torch.nn.Module):
    def __init__(self, C):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 1024), torch.nn.ReLU(),
                                       torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, C))

    def forward(self, x):
        return self.net(x)


def _model(name: str, C: int, device: str):
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(C).to(device)
    import torchvision
    return torchvision.models.resnet18(num_classes=C).to(device)


def _data(N, C, device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, 32, 32, generator=g).to(device)
    Y = torch.randint(0, C, (N,), generator=g).to(device)
    return X, Y


def _timed_loop(step, k_warm: int, k: int, device: str) -> float:
    """Mean seconds per step over k steps after k_warm, the device drained at both ends."""
    for _ in range(k_warm):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / k


def bench_loop(model_name: str, variant: str, N: int, R: int, B: int, C: int, device: str, X, Y,
               k: int, repeats: int) -> dict:
    model = _model(model_name, C, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if variant == "plain":
        g = torch.Generator().manual_seed(1)

        def batches():
            while True:
                yield torch.randint(0, N, (B,), generator=g)
        it, sampler = batches(), None
    else:
        sampler = hardmix.ReplaySampler(N, batch_size=B, capacity=R, replay_fraction=RHO, seed=0, replay_lag=20,
                                        num_classes=C, state_device="cuda" if variant == "gpu-state" else "cpu")
        it = (torch.tensor(b) for b in batches_forever(sampler))

    in_sampler = [0.0]  # host seconds spent in the sampler's calls (next batch, weights, update)

    def step():
        t0 = time.perf_counter()
        ib = next(it)
        in_sampler[0] += time.perf_counter() - t0
        # (pinned, as a DataLoader with pin_memory=True gives it: the copy does not wait)
        ig = (ib.pin_memory() if device != "cpu" else ib).to(device, non_blocking=True)
        x, t = X[ig], Y[ig]
        logits = model(x)
        loss = F.cross_entropy(logits, t, reduction="none")
        if sampler is None:
            loss.mean().backward()
        else:
            t0 = time.perf_counter()
            w = sampler.weights(ib)
            in_sampler[0] += time.perf_counter() - t0
            w = w.to(device, non_blocking=True)
            (loss * w).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sampler is not None:
            t0 = time.perf_counter()
            ld, lg = loss.detach(), logits.detach()
            if variant == "sync":
                sampler.update(ib, ld.cpu(), lg.cpu(), t.cpu())
            else:
                sampler.update(ib, ld, lg, t)
            in_sampler[0] += time.perf_counter() - t0

    times, host = [], []
    for r in range(repeats):
        in_sampler[0] = 0.0
        times.append(_timed_loop(step, 30 if r == 0 else 5, k, device))
        host.append(in_sampler[0] / (k + (30 if r == 0 else 5)))
    out = dict(group="loop", model=model_name, variant=variant, device=device, N=N, R=R, B=B, C=C,
               steps=k, repeats=repeats, step_us=statistics.median(times) * 1e6,
               all_us=[t * 1e6 for t in times], sampler_host_us=statistics.median(host) * 1e6)
    if sampler is not None:
        out["state_on"] = str(sampler.engine.device)
        out["reservoir"] = sampler.stats(full=False).get("size")
    return out


def bench_train(model_name: str, B: int, C: int, device: str, X, Y, k: int) -> dict:
    model = _model(model_name, C, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(2)

    def step():
        ig = torch.randint(0, X.shape[0], (B,), generator=g).to(device, non_blocking=True)
        loss = F.cross_entropy(model(X[ig]), Y[ig])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    per = _timed_loop(step, 20, k, device)
    return dict(group="train", model=model_name, device=device, B=B, C=C, steps=k, step_us=per * 1e6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--steps", type=int, default=100, help="timed engine steps per shape")
    p.add_argument("--loop-steps", type=int, default=100, help="timed loop steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=150.0, help="skip what is left after this long")
    p.add_argument("--no-engine", action="store_true", help="skip the engine group")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    dev = a.device
    if dev != "cpu" and not torch.cuda.is_available():
        print("no CUDA GPU: use --device cpu", file=sys.stderr)
        return 2
    info = dict(torch=torch.__version__, hardmix=hardmix.__version__,
                gpu=torch.cuda.get_device_name() if dev != "cpu" else None,
                command=" ".join([sys.executable] + sys.argv))
    recs: list[dict] = []

    def emit(r):
        recs.append(r)
        print(json.dumps(r), flush=True)

    def time_left() -> bool:
        return time.perf_counter() - t_start < a.budget_s

    for N, R, B, C in [] if a.no_engine else SHAPES:
        for threads in (1, None):
            emit(bench_engine("cpu", N, R, B, C, a.steps, threads))
        if dev != "cpu" and time_left():
            emit(bench_engine(dev, N, R, B, C, a.steps, None))
    N, R, _, C = SHAPES[0]
    X, Y = _data(N, C, dev)
    for model, B, k in LOOPS:
        if not time_left():
            break
        if model == "resnet18" and importlib.util.find_spec("torchvision") is None:
            print("no torchvision: ResNet-18 rows skipped", file=sys.stderr)
            continue
        k = max(5, a.loop_steps * k // 100)
        emit(bench_train(model, B, C, dev, X, Y, k))
        variants = ("plain", "host", "gpu-state", "sync") if dev != "cpu" else ("plain", "sync")
        for v in variants:
            if time_left():
                emit(bench_loop(model, v, N, R, B, C, dev, X, Y, k, a.repeats))
    info["seconds"] = time.perf_counter() - t_start
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(info=info, records=recs), f, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
