"""ReplaySampler under torch.distributed (gloo, CPU processes on this
machine) against world size, and the bytes it moves per step.

    .venv/bin/python benchmarks/bench_distributed.py --json out/bench-distributed.json

Each rank runs the training loop's sampler calls (next batch, then --work-ms
of matrix products standing in for the model's step, or with --idle of sleep,
as the host waits while a GPU computes, then update()) for
--steps steps after --warm steps, with replay_lag --lag; the figure is the
median over steps of the slowest rank's time in the sampler's calls (next
batch + update). Rows "waited" are an ablation: the same sampler made to wait
for each update's exchange in update(), as it does for the first update and
with a sharded table; the others start it there and wait for it when the
update is applied.
Bytes per step and rank: one all_gather receives W blocks of (B_max + 1) x 6
float64 (B_max = B here). With ``shard_table=True`` (rows "sharded") one
all_reduce of [W * B + ceil(W / 8), 8] float64 follows (its payload is listed; a ring
all-reduce moves about twice that per rank), and the engine state per rank is
listed beside it. The anchor of each world size is the row "plain": a
``BatchSampler`` over a ``DistributedSampler`` making the same batches (next
batch alone: it has no update); the table gives each row's ratio to the
anchor of its world size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import BatchSampler, DistributedSampler

import hardmix
from hardmix.bench import batches_forever


def _rank(rank, world, path, out, N, B, R, warm, steps, table, lag, work_ms, idle):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    if table == "waited":  # the ablation: every exchange finished where it starts
        start = hardmix.distributed.GatheredEntry.__init__

        def started_and_waited(self, *args, **kwargs):
            start(self, *args, **kwargs)
            self.finish()

        hardmix.distributed.GatheredEntry.__init__ = started_and_waited
    if table == "plain":
        s = BatchSampler(DistributedSampler(range(N), num_replicas=world, rank=rank, seed=0), B, drop_last=False)
    else:
        s = hardmix.ReplaySampler(N, batch_size=B, capacity=R, seed=0, replay_lag=lag,
                                  shard_table=table == "sharded", num_replicas=world, rank=rank)
    loss_of = torch.rand(N, generator=torch.Generator().manual_seed(0))
    it = batches_forever(s)
    a = torch.randn(128, 128, generator=torch.Generator().manual_seed(rank))
    times = []
    for k in range(warm + steps):
        t0 = time.perf_counter()
        idx = torch.tensor(next(it))
        t1 = time.perf_counter()
        end = t1 + work_ms / 1e3
        if idle:  # (as the host does while a GPU computes the step)
            time.sleep(work_ms / 1e3)
        while time.perf_counter() < end:
            a @ a
        losses = loss_of[idx]
        t2 = time.perf_counter()
        if table != "plain":
            s.update(idx, losses)
        if k >= warm:
            times.append(t1 - t0 + time.perf_counter() - t2)
    state = 0 if table == "plain" else sum(t.numel() * t.element_size() for t in s.engine.state_tensors())
    torch.save({"times": times, "B": len(idx), "state": state}, f"{out}.{rank}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def measure(world, N, B, R, warm, steps, table, lag, work_ms, idle):
    with tempfile.TemporaryDirectory() as d:
        path, out = os.path.join(d, "pg"), os.path.join(d, "out")
        mp.spawn(_rank, args=(world, path, out, N, B, R, warm, steps, table, lag, work_ms, idle), nprocs=world,
                 join=True)
        res = [torch.load(f"{out}.{r}") for r in range(world)]
    slowest = [max(r["times"][k] for r in res) for k in range(steps)]
    return statistics.median(slowest), max(r["state"] for r in res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--R", type=int, default=8192)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lag", type=int, default=2)
    ap.add_argument("--work-ms", type=float, default=1.0, help="the stand-in model step between the calls")
    ap.add_argument("--idle", action="store_true", help="the stand-in step sleeps instead of computing")
    ap.add_argument("--tables", default="plain,whole,waited,sharded",
                    help="plain (the anchor), whole, waited (ablation), sharded")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for table in a.tables.split(","):
        for w in [int(x) for x in a.worlds.split(",")]:
            if w == 1 and table in ("waited", "sharded"):
                continue  # (no collective: the same as the row "whole")
            med, state = measure(w, a.N, a.B, a.R, a.warm, a.steps, table, a.lag, a.work_ms, a.idle)
            bytes_recv = 0 if w == 1 or table == "plain" else w * (a.B + 1) * 6 * 8
            rows.append({"world": w, "table": table, "median_sampler_us": med * 1e6, "global_batch": w * a.B,
                         "bytes_received_per_rank_per_step": bytes_recv,
                         "all_reduce_payload_bytes": (w * a.B + -(-w // 8)) * 64 if table == "sharded" and w > 1
                         else 0,
                         "engine_state_bytes_per_rank": state})
    base = {r["world"]: r["median_sampler_us"] for r in rows if r["table"] == "plain"}
    print("| table | world size | global batch | next + update median (µs) | × plain | all_gather bytes "
          "received per rank | all_reduce payload (bytes) | engine state per rank (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['median_sampler_us'] / base[r['world']]:.2f}" if r["world"] in base else "—"
        print(f"| {r['table']} | {r['world']} | {r['global_batch']} | {r['median_sampler_us']:.0f} | {ratio} | "
              f"{r['bytes_received_per_rank_per_step']} | {r['all_reduce_payload_bytes']} | "
              f"{r['engine_state_bytes_per_rank'] / 1e6:.2f} |")
    print(f"\nN={a.N}, B={a.B} per rank, R={a.R}, replay_lag={a.lag}, {a.work_ms} ms of "
          f"{'idle wait' if a.idle else 'work'} between the calls, "
          f"{os.cpu_count()} cores, gloo, one thread per process")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
