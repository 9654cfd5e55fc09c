"""Whether handing the engine's work to the sampler's worker thread pays.

A timing choice: the batches, weights and reservoir are the same either way.
It pays when the training steps get shorter, and that depends on the loop.
The worker runs Python too, and the two threads take turns holding the GIL:
beside a training thread that is busy in Python (a DataLoader without workers
fetching items one by one), every turn costs it a thread switch and the
worker can slow it by more than the work it takes away; beside a thread that
waits without the GIL (for a GPU, for long native kernels), the work can be
hidden. So :class:`StepClock` times the training step (one ``update()`` to
the next) both ways, in alternating blocks of steps (a probe:
hand-overs wherever the sampler can make them, then none, and so on), first
after ``FIRST`` steps and then every ``PERIOD``, and keeps the faster way
(the lower median) until the next probe. It counts the steps it has seen
itself: a checkpoint does not carry it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

BLOCK = 16  # steps per probe block (the first of each is not timed: it follows the switch)
BLOCKS = 6  # blocks per probe, alternating: hand-overs on, off, on, ... off
PERIOD = 1024  # steps from the start of one probe to the next
FIRST = 192  # the first probe's start (the steps before it, warming up, say little)


class StepClock:
    """Times training steps with and without hand-overs, and chooses (see the
    module docstring). ``now``: the time source, in seconds. The sampler
    calls :meth:`tick` as each update arrives and asks :meth:`hand_over`
    between ticks."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._ticks = 0  # ticks so far: the step now running ends at tick number _ticks
        self._last: float | None = None  # the time of the previous tick (None: the next step is not timed)
        self._times: dict[bool, list[float]] = {True: [], False: []}  # step times of this probe, by way
        self.choice = True  # outside probes: hand-overs on (until the first probe decides)

    def _in_probe(self) -> int | None:
        """The running step's place in its probe, or None outside probes."""
        k = self._ticks - FIRST
        return k % PERIOD if k >= 0 and k % PERIOD < BLOCK * BLOCKS else None

    def probing(self) -> bool:
        """Whether the running step is in a probe (then :meth:`hand_over` alone decides)."""
        return self._in_probe() is not None

    def hand_over(self) -> bool:
        """Whether the running step's work may go to the worker."""
        k = self._in_probe()
        return self.choice if k is None else k // BLOCK % 2 == 0

    def tick(self) -> None:
        """An update is here: the step that ends now is timed for the way it
        ran (in a probe); at a probe's last step, the faster way is chosen."""
        now, last, k = self._now(), self._last, self._in_probe()
        self._last = now
        self._ticks += 1
        if k is None or last is None or k % BLOCK == 0:
            return
        self._times[k // BLOCK % 2 == 0].append(now - last)
        if k == BLOCK * BLOCKS - 1:
            on, off = self._times[True], self._times[False]
            if on and off:
                self.choice = statistics.median(on) < statistics.median(off)
            self._times = {True: [], False: []}

    def pause(self) -> None:
        """The step now running is not timed (it spans a restore or a copy)."""
        self._last = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_last"] = None  # (another process's or an earlier time: not a step)
        return state
