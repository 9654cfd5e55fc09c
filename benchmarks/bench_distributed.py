"""ReplaySampler.update() under torch.distributed (gloo, CPU processes on this
machine) against world size, and the bytes it moves per step.

    .venv/bin/python benchmarks/bench_distributed.py --json out/bench-distributed.json

Each rank runs the sampler loop (next batch, update) for --steps steps after
--warm steps; the figure is the median over steps of the slowest rank's
update() time (the collective makes every rank wait for the slowest).
Bytes per step and rank: one all_gather receives W blocks of (B_max + 1) x 6
float64 (B_max = B here). With ``shard_table=True`` (rows "sharded") one
all_reduce of [W * B + ceil(W / 8), 8] float64 follows (its payload is listed; a ring
all-reduce moves about twice that per rank), and the engine state per rank is
listed beside it. The anchor is the first row (world size 1, whole table: no
collective); the table gives each row's ratio to it.
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

import hardmix
from hardmix.bench import batches_forever


def _rank(rank, world, path, out, N, B, R, warm, steps, shard):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=R, seed=0, replay_lag=0, shard_table=shard,
                              num_replicas=world, rank=rank)
    loss_of = torch.rand(N, generator=torch.Generator().manual_seed(0))
    it = batches_forever(s)
    times = []
    for k in range(warm + steps):
        idx = torch.tensor(next(it))
        losses = loss_of[idx]
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        s.update(idx, losses)
        if k >= warm:
            times.append(time.perf_counter() - t0)
    state = sum(t.numel() * t.element_size() for t in s.engine.state_tensors())
    torch.save({"times": times, "B": len(idx), "state": state}, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


def measure(world, N, B, R, warm, steps, shard):
    with tempfile.TemporaryDirectory() as d:
        path, out = os.path.join(d, "pg"), os.path.join(d, "out")
        mp.spawn(_rank, args=(world, path, out, N, B, R, warm, steps, shard), nprocs=world, join=True)
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
    ap.add_argument("--shard", default="0,1", help="table sharded: 0, 1 or both")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for shard in [x == "1" for x in a.shard.split(",")]:
        for w in [int(x) for x in a.worlds.split(",")]:
            med, state = measure(w, a.N, a.B, a.R, a.warm, a.steps, shard)
            bytes_recv = 0 if w == 1 else w * (a.B + 1) * 6 * 8
            rows.append({"world": w, "sharded": shard, "median_update_us": med * 1e6, "global_batch": w * a.B,
                         "bytes_received_per_rank_per_step": bytes_recv,
                         "all_reduce_payload_bytes": (w * a.B + -(-w // 8)) * 64 if shard and w > 1 else 0,
                         "engine_state_bytes_per_rank": state})
    base = rows[0]["median_update_us"]
    print("| table | world size | global batch | update median (µs) | × first row | all_gather bytes received "
          "per rank | all_reduce payload (bytes) | engine state per rank (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {'sharded' if r['sharded'] else 'whole'} | {r['world']} | {r['global_batch']} | "
              f"{r['median_update_us']:.0f} | {r['median_update_us'] / base:.2f} | "
              f"{r['bytes_received_per_rank_per_step']} | {r['all_reduce_payload_bytes']} | "
              f"{r['engine_state_bytes_per_rank'] / 1e6:.2f} |")
    print(f"\nN={a.N}, B={a.B} per rank, R={a.R}, {os.cpu_count()} cores, gloo, one thread per process")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
