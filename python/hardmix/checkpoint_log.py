"""The checkpoint log: what a sampler's ``state_dict()`` holds of the policy.

A state holds a copy of the engine's state at some recent step (the base)
and the list of updates received since (the log). The log is *live*: it is
the same list object the sampler keeps appending to, so a state handed out
receives the updates of the batches yielded before it was taken until it is
serialised. A new base is copied once the log is a pass long (``rebase``
updates) and no state handed out needs it to go on; an older log still
needed by a handed-out state is kept open until it reaches what that state
needs (``until``).

:class:`CheckpointLog` only keeps lists and the base; the sampler tells it
what it received (:meth:`append`), when its engine was replaced
(:meth:`drop`), and asks for the log of a new state (:meth:`snapshot`).
"""

from __future__ import annotations

from typing import Callable, Iterable


class CheckpointLog:
    """The live log of a sampler's checkpoints (see the module docstring)."""

    def __init__(self, rebase: int) -> None:
        self.rebase = rebase  # updates per base copy, at least (ceil(N / B): O(B) per update amortised)
        self.base: dict | None = None  # the engine's state at update ``start``
        self.log: list | None = None  # the updates from ``start`` on (live)
        self.start = 0
        self.dynamics = 0  # sharded: the updates whose dynamics the copied engine holds
        self.until = 0  # the updates the states handed out need (their frontier)
        self._open: list = []  # (log, start, until): older logs states handed out still need

    def append(self, entry: dict) -> None:
        """One more update received."""
        if self.log is not None:
            self.log.append(entry)
            if self.start + len(self.log) >= self.until and len(self.log) >= self.rebase:
                # No state handed out needs more: stop logging; the next
                # snapshot copies the engine again.
                self.base, self.log = None, None
        if self._open:
            still = []
            for log, start, until in self._open:
                if start + len(log) < until:
                    log.append(entry)
                if start + len(log) < until:
                    still.append((log, start, until))
            self._open = still

    def drop(self) -> None:
        """The engine was replaced: the next snapshot copies anew; states
        already handed out keep their log."""
        if self.log is not None:
            self._open.append((self.log, self.start, self.until))
        self.base, self.log = None, None

    def snapshot(self, frontier: int, copy_engine: Callable[[], dict], step: int, received: int,
                 pending: Iterable[dict]) -> tuple[dict, int, int, list]:
        """(base, start, dynamics, log) for a state whose updates reach
        ``frontier``: the current base and log, or a new base
        (``copy_engine()``, the engine at update ``step``, with ``received``
        updates received and ``pending`` of them not yet applied) when there
        is none or the log is a pass long."""
        self.until = max(self.until, frontier)
        if self.log is None or len(self.log) >= self.rebase:
            if self.log is not None:
                self._open.append((self.log, self.start, self.until))
            self.base = copy_engine()
            self.start, self.dynamics, self.log = step, received, list(pending)
        return self.base, self.start, self.dynamics, self.log
