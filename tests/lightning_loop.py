"""A Lightning fit with hardmix on a small synthetic task, for tests/test_integrations.py;
run as a script (a new process each time, as a resumed job is):

    python tests/lightning_loop.py OUT [--workers N] [--save-at K,K2,... --ckpt-dir DIR]
        [--resume CKPT] [--devices W]

writes {"batches": [...], "members": tensor, "lens": [...]} to OUT (OUT.rank with W > 1).
With --save-at, the Trainer saves DIR/stepK.ckpt after step K (as a
ModelCheckpoint does) and goes on.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import hardmix
from hardmix.integrations.lightning import ReplayCallback
from loop_common import B, C, D, EPOCHS, N, make_data, parser, save_steps


def main() -> None:
    import lightning.pytorch as pl

    ap = parser()
    ap.add_argument("--devices", type=int, default=1)
    args = ap.parse_args()

    replay = ReplayCallback(lambda: hardmix.ReplaySampler(N, batch_size=B, capacity=48, replay_fraction=0.5, seed=3))
    data = hardmix.WithIndex(make_data())

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))
            self.seen: list[list[int]] = []
            self.lens: list[int] = []

        def train_dataloader(self):
            return DataLoader(data, batch_sampler=replay.sampler, num_workers=args.workers)

        def on_train_epoch_start(self):
            self.lens.append(len(self.trainer.train_dataloader))

        def training_step(self, batch, batch_idx):
            idx, x, y = batch
            self.seen.append(idx.tolist())
            logits = self.net(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            replay.sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            return losses.mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    save_at = save_steps(args)

    class SaveAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in save_at:
                trainer.save_checkpoint(os.path.join(args.ckpt_dir, f"step{trainer.global_step}.ckpt"))

    callbacks = [replay, SaveAt()]
    torch.manual_seed(0)
    model = Model()
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", callbacks=callbacks,
                         use_distributed_sampler=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, ckpt_path=args.resume)
    out = args.out if args.devices == 1 else f"{args.out}.{trainer.global_rank}"
    torch.save({"batches": model.seen, "members": replay.sampler.reservoir()["index"], "lens": model.lens,
                "lag": replay.sampler.replay_lag}, out)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
