"""Dataset helpers: getting each example's dataset index to the training loop.

``sampler.update(indices, losses)`` needs the dataset index of every example in
the batch. :class:`WithIndex` wraps a map-style dataset so that each item
carries its index first::

    loader = DataLoader(WithIndex(train_set), batch_sampler=sampler)
    for idx, x, y in loader:      # idx: int64 tensor [B]
        ...

It works with the default collate function (tuples, dicts, tensors, numbers).
With a custom ``collate_fn`` written for the unwrapped items, wrap it with
:func:`collate_with_index`, which takes the indices off, calls it on the rest
and returns ``(indices, collated)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset


class WithIndex(Dataset):
    """``WithIndex(ds)[i] == (i, *ds[i])`` when ``ds[i]`` is a tuple, else ``(i, ds[i])``."""

    def __init__(self, dataset):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"WithIndex needs a map-style dataset (with __getitem__ and __len__), got {type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (index, *item)
        return (index, item)

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The items of a batch, as ``__getitem__`` gives them (the DataLoader's
        batched fetch; the wrapped dataset's own ``__getitems__`` when it has one)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [(i, *item) if isinstance(item, tuple) else (i, item) for i, item in zip(indices, items)]

    def __getattr__(self, name: str) -> Any:  # e.g. .classes, .targets of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_with_index(collate_fn: Callable[[list], Any]) -> Callable[[Sequence[tuple]], tuple]:
    """Adapt a collate function written for the unwrapped items to WithIndex items.

    Returns a collate function mapping ``[(i, *item), ...]`` to
    ``(torch.tensor([i, ...]), collate_fn([item, ...]))``, where ``item`` is the
    rest of the tuple (or its only element when there is one).
    """

    def collate(batch: Sequence[tuple]):
        indices = torch.tensor([b[0] for b in batch], dtype=torch.int64)
        items = [b[1] if len(b) == 2 else tuple(b[1:]) for b in batch]
        return indices, collate_fn(items)

    return collate
