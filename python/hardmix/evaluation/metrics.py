"""What a run reports: accuracy per task at each task's end, the final figures,
and what the memory holds at the end.

Figures (one :class:`Result` per protocol, method and seed):

- ``final_acc``: the mean over tasks of each task's test accuracy after the
  last task (i.i.d.: the test accuracy);
- ``forgetting`` (continual only): Chaudhry et al. 2018, for each task but
  the last, its best accuracy at the end of a task before the last minus its
  final accuracy, averaged;
- ``worst_class_acc``: the lowest final per-class test accuracy;
- ``reservoir_noisy_frac``: with label noise, the share of mislabeled
  examples in the memory at the end (None without noise or memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .streams import Stream


@dataclass
class Result:
    protocol: str
    method: str
    seed: int
    final_acc: float = 0.0
    forgetting: float | None = None
    worst_class_acc: float = 0.0
    reservoir_noisy_frac: float | None = None
    stream_noisy_frac: float | None = None
    memory_classes: list[int] | None = None  # members per class at the end
    task_end_acc: list[list[float]] = field(default_factory=list)  # [task end][task]
    curve_steps: list[int] = field(default_factory=list)
    curve_task_acc: list[list[float]] = field(default_factory=list)  # [point][task]
    curve_memory_classes: list[list[int]] = field(default_factory=list)  # [point][class]
    task_ends: list[int] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    RECORD_KEYS = ("protocol", "method", "seed", "final_acc", "forgetting", "worst_class_acc",
                   "reservoir_noisy_frac")

    def record(self) -> dict:
        """The record ``eval --json`` writes."""
        return {k: getattr(self, k) for k in self.RECORD_KEYS}


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 4096]).argmax(1) for i in range(0, len(x), 4096)])


class Monitor:
    """Collects one run's figures. A training loop calls :meth:`step` after
    every optimiser step (with the memory's dataset indices, or None) and
    :meth:`task_end` after each task; :meth:`finish` returns the
    :class:`Result`. ``curve_points`` > 0 also records accuracy per task and
    the memory's classes that many times per task (for plots)."""

    def __init__(self, stream: Stream, method: str, seed: int, curve_points: int = 0):
        self.stream = stream
        self.result = Result(stream.name, method, seed)
        self.curve_points = curve_points
        self.steps = 0
        self._task_start = 0
        self._every = 0
        self._start = time.perf_counter()

    def task_accuracies(self, model: torch.nn.Module) -> list[float]:
        s = self.stream
        pred = _predict(model, s.x_test)
        right = (pred == s.y_test).double()
        return [float(right[t].mean()) for t in s.test_tasks]

    def memory_classes(self, memory) -> list[int]:
        if memory is None or len(memory) == 0:
            return [0] * self.stream.num_classes
        idx = torch.as_tensor(memory, dtype=torch.int64)
        return torch.bincount(self.stream.y_train[idx], minlength=self.stream.num_classes).tolist()

    def task_start(self, steps_in_task: int) -> None:
        """Optional: the number of steps the task will take (for curve points)."""
        self._task_start = self.steps
        self._every = max(1, steps_in_task // self.curve_points) if self.curve_points else 0

    def step(self, model: torch.nn.Module, memory=None) -> None:
        self.steps += 1
        if self._every and (self.steps - self._task_start) % self._every == 0:
            r = self.result
            r.curve_steps.append(self.steps)
            r.curve_task_acc.append(self.task_accuracies(model))
            r.curve_memory_classes.append(self.memory_classes(memory))

    def task_end(self, model: torch.nn.Module) -> None:
        self.result.task_ends.append(self.steps)
        self.result.task_end_acc.append(self.task_accuracies(model))

    def finish(self, model: torch.nn.Module, memory=None) -> Result:
        s, r = self.stream, self.result
        final = r.task_end_acc[-1]
        T = len(final)
        r.final_acc = sum(final) / T
        if s.protocol.kind == "continual" and T > 1:
            r.forgetting = sum(max(r.task_end_acc[k][j] for k in range(T - 1)) - final[j]
                               for j in range(T - 1)) / (T - 1)
        pred = _predict(model, s.x_test)
        right = torch.bincount(s.y_test[pred == s.y_test], minlength=s.num_classes).double()
        total = torch.bincount(s.y_test, minlength=s.num_classes).double()
        r.worst_class_acc = float((right / total.clamp(min=1))[total > 0].min())
        noisy = s.noisy
        if bool(noisy.any()):
            r.stream_noisy_frac = float(noisy.float().mean())
            if memory is not None and len(memory):
                r.reservoir_noisy_frac = float(noisy[torch.as_tensor(memory, dtype=torch.int64)].float().mean())
        if memory is not None:
            r.memory_classes = self.memory_classes(memory)
        r.steps = self.steps
        r.seconds = time.perf_counter() - self._start
        return r
