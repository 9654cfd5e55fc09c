"""The dtypes each input of an update or a draw may have, defined once for
every layer above the ops (the sampler, the engine, the margin op's wrapper,
checkpoint checks), so that no two of them accept different things.
Narrower integers and half floats are widened exactly before the ops."""

import torch

INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
"""Dataset indices (``indices``, ``exclude``, ``set_fresh``)."""

LOSS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
"""Per-example losses."""

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Losses widened to float32 (exactly) on the way in."""

SCORE_DTYPES = (torch.float32, torch.float64)
"""Margins and priorities."""

TARGET_DTYPES = (torch.int64, torch.int32)
"""Targets and classes."""

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Logits (the margin op reads them as they are)."""
