"""An Accelerate training loop with hardmix on a small synthetic task, for
tests/test_integrations.py; run as a script (a new process each time):

    python tests/accelerate_loop.py OUT [--workers N] [--save-at K,K2,... --ckpt-dir DIR] [--resume DIR]

writes {"batches": [...], "members": tensor, "lens": [...]} to OUT (OUT.rank
under torchrun with several processes: then the loader is not prepared, and
batches go to the device by hand). With --save-at, the state is saved to
DIR/stepK after step K, and the run goes on.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import hardmix
from hardmix.integrations import accelerate as hm_accelerate
from loop_common import B, C, D, EPOCHS, N, make_data, parser, save_steps


def main() -> None:
    from accelerate import Accelerator

    args = parser().parse_args()

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    sampler = hardmix.ReplaySampler(N, batch_size=B, capacity=48, replay_fraction=0.5, seed=3)
    loader = DataLoader(hardmix.WithIndex(make_data()), batch_sampler=sampler, num_workers=args.workers)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    several = accelerator.num_processes > 1
    if several:  # the sampler splits the data by rank itself: the loader stays as it is
        model, opt = accelerator.prepare(model, opt)
    else:
        model, opt, loader = accelerator.prepare(model, opt, loader)
    start = 0
    if args.resume:
        start = hm_accelerate.load_state(accelerator, args.resume, sampler=sampler,
                                         loader=None if several else loader)
    seen, lens, step = [], [], 0
    for epoch in range(start, EPOCHS):
        lens.append(len(loader))
        if several:
            sampler.set_epoch(epoch)
        for idx, x, y in loader:
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            seen.append(idx.tolist())
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            accelerator.backward(losses.mean())
            opt.step()
            opt.zero_grad()
            sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            step += 1
            if step in save_steps(args):
                hm_accelerate.save_state(accelerator, os.path.join(args.ckpt_dir, f"step{step}"), sampler=sampler)
    out = f"{args.out}.{accelerator.process_index}" if several else args.out
    torch.save({"batches": seen, "members": sampler.reservoir()["index"], "lens": lens}, out)
    if torch.distributed.is_initialized():  # (a process group left to exit teardown can abort the process)
        # The DDP model first: a gloo group it outlives is destroyed with it, and that can
        # deadlock against the group's own threads.
        accelerator.free_memory()
        del model, opt
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
