"""The update queue: the updates a sampler has received and not applied yet.

An update waits here from ``update()`` until a replay draw needs it (the
replay lag). Each queued update is its entry (the dict the checkpoint logs
share: what a restore applies) and what applying it waits for: the exchange
of the ranks' batches still in flight (several ranks), the CUDA event
recorded when its inputs were complete (state on a GPU), or the copy of its
GPU inputs to the host still in flight (state on the host). The sampler
applies the front of the queue (``ReplaySampler._apply``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterable, Iterator

from .distributed import GatheredEntry


@dataclass
class Queued:
    """One update received and not applied."""

    entry: dict  # indices, losses, margins, classes, priorities, replayed, ... (see hardmix.intake)
    ready: object | None = None  # a torch.cuda.Event: the state's device waits for it before the step
    copy: tuple | None = None  # (event, host tensors): the inputs' copy to the host, done when the event is

    def finish(self, wait: bool) -> bool:
        """The entry takes what was in flight once it is complete: all ranks'
        batches from their exchange (hardmix.distributed.GatheredEntry), its
        host copies (same keys; the values equal). True then, or if nothing
        was; False if something still is and ``wait`` is False (an exchange:
        always; several ranks apply updates only where every rank waits)."""
        if isinstance(self.entry, GatheredEntry):
            if not wait:
                return False
            self.entry.finish()
        if self.copy is None:
            return True
        done, host = self.copy
        if not done.query():
            if not wait:
                return False
            done.synchronize()
        self.entry.update(host)
        return True


class UpdateQueue:
    """The updates received and not applied, oldest first (see the module
    docstring). Iterating yields their entries."""

    def __init__(self, entries: Iterable[dict] = ()) -> None:
        self._q: collections.deque[Queued] = collections.deque(Queued(e) for e in entries)

    def push(self, entry: dict, ready: object | None = None, copy: tuple | None = None) -> None:
        self._q.append(Queued(entry, ready, copy))

    def front(self) -> Queued:
        return self._q[0]

    def pop(self) -> Queued:
        return self._q.popleft()

    def deferred(self) -> bool:
        """Whether an update's values are still unchecked (inputs from a GPU)."""
        return any(q.entry.get("deferred") for q in self._q)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[dict]:
        return (q.entry for q in self._q)
