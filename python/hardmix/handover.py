"""Whether handing the engine's work to the sampler's worker thread pays.

A timing choice: the batches, weights and reservoir are the same either way.
It pays when the training steps get shorter, and that depends on the loop.
The worker runs Python too, and the two threads take turns holding the GIL:
beside a training thread that is busy in Python (a DataLoader without workers
fetching items one by one, a small model's many short ops), every turn costs
it a thread switch and the worker can slow it by more than the work it takes
away; beside a thread that waits for a GPU or for long native kernels, the
work is hidden. So :class:`StepClock` times the training step (one
``update()`` to the next) both ways, in alternating blocks of updates (a
probe: hand-overs wherever the sampler can make them, then none, and so on),
first after ``FIRST`` updates and then every ``PERIOD``, and keeps the faster
way (the lower median) until the next probe.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

BLOCK = 16  # updates per probe block (the first of each is not timed: it follows the switch)
BLOCKS = 6  # blocks per probe, alternating: hand-overs on, off, on, ... off
PERIOD = 1024  # updates from the start of one probe to the next
FIRST = 192  # the first probe's start (the steps before it, warming up, say little)


class StepClock:
    """Times training steps with and without hand-overs, and chooses (see the
    module docstring). ``now``: the time source, in seconds."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._last: float | None = None  # the time at the previous tick
        self._times: dict[bool, list[float]] = {True: [], False: []}  # step times, by hand-overs on
        self.choice = True  # outside probes: hand-overs on (until the first probe decides)

    @staticmethod
    def probing(step: int) -> bool:
        """Whether the step before update number ``step`` (0-based) is in a probe."""
        return step >= FIRST and (step - FIRST) % PERIOD < BLOCK * BLOCKS

    def hand_over(self, step: int) -> bool:
        """Whether the work of the step before update number ``step`` (after
        update ``step - 1``) may go to the worker."""
        if self.probing(step):
            return (step - FIRST) % PERIOD // BLOCK % 2 == 0
        return self.choice

    def tick(self, step: int) -> None:
        """Update number ``step`` is here: in a probe, the step since the
        previous tick is timed for the way it ran; at a probe's last step,
        the faster way is chosen."""
        now = self._now()
        last, self._last = self._last, now
        if last is None or not self.probing(step) or (step - FIRST) % BLOCK == 0:
            return
        self._times[self.hand_over(step)].append(now - last)
        if (step - FIRST) % PERIOD == BLOCK * BLOCKS - 1:
            on, off = self._times[True], self._times[False]
            if on and off:
                self.choice = statistics.median(on) < statistics.median(off)
            self._times = {True: [], False: []}
