"""hardmix inside training frameworks. Each module imports its framework
when it is imported itself (install with the extra of the same name):

- :mod:`hardmix.integrations.lightning`: a Lightning ``Callback`` that builds
  or holds the sampler, checks the Trainer's settings, and carries the
  sampler in the Trainer's checkpoints.
- :mod:`hardmix.integrations.accelerate`: the sampler in ``save_state`` /
  ``load_state``, and the prepared loader's epoch counter after a restore.
- :mod:`hardmix.integrations.transformers`: a ``Trainer`` that trains on the
  sampler's batches, reports per-example losses and checkpoints the sampler.
"""

from __future__ import annotations

import os


def state_file(directory, rank: int) -> str:
    """Where a process's sampler state lies in a checkpoint directory."""
    return os.path.join(directory, f"hardmix_sampler_{rank}.pt")


def save_state_file(sampler, path: str) -> None:
    """``torch.save(sampler.state_dict(), path)`` through a temporary file and
    a rename: a crash while saving leaves the previous file whole."""
    import torch

    torch.save(sampler.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
