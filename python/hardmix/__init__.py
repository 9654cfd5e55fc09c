"""hardmix: a replay sampler that fights forgetting.

While a model trains, hardmix keeps a bounded reservoir of important examples
and mixes them into every batch beside fresh data. The per-step work runs in
native ops registered with torch (``torch.ops.hardmix.*``); ``hardmix.ops``
holds their typed wrappers and ``hardmix.rng`` the pure-Python mirror of the
counter-based random numbers. The policy: ``PolicyConfig`` (its knobs),
``ReferencePolicy`` (the pure-Python specification) and ``Engine`` (the same
policy on native ops, state in tensors). ``ReplaySampler`` is what a
training loop uses: a DataLoader batch sampler backed by the engine.
"""

import torch  # noqa: F401  (must be imported before the native library)

from . import _load

CUDA_KERNELS = _load.load()
"""Whether this build's CUDA kernels are loaded (a CUDA torch and a CUDA build)."""

from . import config, data, engine, losses, ops, reference, rng, sampler, schedules  # noqa: E402
from .config import PolicyConfig  # noqa: E402
from .data import WithIndex, collate_with_index  # noqa: E402
from .engine import Engine  # noqa: E402
from .ops import gumbel, margin, uniform  # noqa: E402
from .reference import ReferencePolicy  # noqa: E402
from .sampler import ReplaySampler  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CUDA_KERNELS",
    "Engine",
    "PolicyConfig",
    "ReferencePolicy",
    "ReplaySampler",
    "WithIndex",
    "collate_with_index",
    "config",
    "data",
    "engine",
    "gumbel",
    "losses",
    "margin",
    "ops",
    "reference",
    "rng",
    "sampler",
    "schedules",
    "uniform",
    "__version__",
]
