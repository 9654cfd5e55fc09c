"""A transformers Trainer run with hardmix (ReplayTrainer) on a small synthetic
task, for tests/test_integrations.py; run as a script (a new process each time):

    python tests/hf_loop.py OUT [--workers N] [--accumulate GA] [--save-at K,K2,... --ckpt-dir DIR]
        [--resume CKPT]

writes {"batches": [...], "members": tensor} to OUT (OUT.rank under torchrun
with several processes). With --save-at the
Trainer saves a checkpoint after optimizer step K (DIR/checkpoint-K) and goes on.
"""

from __future__ import annotations

import gc
import os

import torch

from loop_common import B, C, D, EPOCHS, make_data, parser, save_steps


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))

    def forward(self, x, labels=None):
        return {"logits": self.net(x)}


class Items(torch.utils.data.Dataset):
    def __init__(self):
        self.data = make_data()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"x": x, "labels": y}


def main() -> None:
    import transformers

    from hardmix.integrations.transformers import ReplayTrainer

    ap = parser()
    ap.add_argument("--accumulate", type=int, default=1)
    args = ap.parse_args()
    save_at = save_steps(args)
    seen: list[list[int]] = []

    class Record(transformers.TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in save_at:
                control.should_save = True
            return control

    class Recording(ReplayTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                seen.append(inputs["hardmix_index"].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    targs = transformers.TrainingArguments(
        output_dir=args.ckpt_dir, per_device_train_batch_size=B, num_train_epochs=EPOCHS,
        gradient_accumulation_steps=args.accumulate, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
        save_strategy="no" if not save_at else "steps", save_steps=10**9, report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=args.workers, logging_strategy="no", disable_tqdm=True)
    torch.manual_seed(0)
    trainer = Recording(model=Net(), args=targs, train_dataset=Items(), callbacks=[Record()],
                        replay={"capacity": 48, "replay_fraction": 0.5})
    trainer.train(resume_from_checkpoint=args.resume)
    out = args.out if targs.world_size == 1 else f"{args.out}.{targs.process_index}"
    torch.save({"batches": seen, "members": trainer.replay_sampler.reservoir()["index"],
                "lens": len(trainer.replay_sampler)}, out)
    if torch.distributed.is_initialized():  # (a process group left to exit teardown can abort the process)
        # The DDP model first: a gloo group it outlives is destroyed with it, and that can
        # deadlock against the group's own threads (the Trainer's accelerator holds it too).
        trainer.accelerator.free_memory()
        del trainer
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
