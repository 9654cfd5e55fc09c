"""Replay-fraction schedules: rho(t), the share of each batch drawn from the reservoir.

A schedule is a pure function of the step t (the number of batches yielded so
far), so it needs no state in checkpoints and gives the same batches however
the loop is interrupted. Every schedule stays in [0, rho_max] with
rho_max < 1: fresh data always keeps part of every batch.

    >>> from hardmix.schedules import LinearRamp, Anneal
    >>> s = Anneal(LinearRamp(0.25, warmup_steps=500, ramp_steps=1000), total_steps=10_000, anneal_steps=2_000)
    >>> s(0), s(1000), s(5000), s(10_000)
    (0.0, 0.125, 0.25, 0.0)

The number of replayed examples in a batch of B is ``replay_count(rho(t), B)``.
"""

from __future__ import annotations

import math
from typing import Callable, Union


def _check_rho(rho, name: str = "rho") -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or not 0 <= rho < 1:
        raise ValueError(f"{name} must be a number in [0, 1) (fresh data must keep part of every batch), got {rho!r}")
    return float(rho)


def _check_steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def replay_count(rho: float, batch_size: int) -> int:
    """m = floor(rho * B + 1/2): the replayed examples in a batch of B (< B for rho < 1)."""
    return min(int(math.floor(rho * batch_size + 0.5)), batch_size - 1) if batch_size > 0 else 0


class Schedule:
    """Base class: ``schedule(t) -> rho`` for step t >= 0.

    ``peak`` is the largest value the schedule takes (None: not declared);
    a sampler sizes its epochs by it (``ReplaySampler(epoch_length="auto")``).
    """

    @property
    def peak(self) -> float | None:
        return None

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k.lstrip('_')}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """rho(t) = rho."""

    def __init__(self, rho: float):
        self.rho = _check_rho(rho)

    @property
    def peak(self) -> float:
        return self.rho

    def __call__(self, t: int) -> float:
        return self.rho


class LinearRamp(Schedule):
    """0 during the first ``warmup_steps`` steps, then a linear ramp to ``rho``
    over ``ramp_steps`` steps, then ``rho``."""

    def __init__(self, rho: float, warmup_steps: int = 0, ramp_steps: int = 0):
        self.rho = _check_rho(rho)
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps")
        self.ramp_steps = _check_steps(ramp_steps, "ramp_steps")

    @property
    def peak(self) -> float:
        return self.rho

    def progress(self, t: int) -> float:
        if t < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, (t - self.warmup_steps) / self.ramp_steps)

    def __call__(self, t: int) -> float:
        return self.rho * self.progress(t)


class Cosine(LinearRamp):
    """Like :class:`LinearRamp`, with a half-cosine ramp (gentle at both ends)."""

    def __call__(self, t: int) -> float:
        return self.rho * 0.5 * (1.0 - math.cos(math.pi * self.progress(t)))


class Anneal(Schedule):
    """``inner`` until ``total_steps - anneal_steps``, then linearly down to 0
    at ``total_steps`` (and 0 after): replay fades out at the end of training."""

    def __init__(self, inner: Schedule | float, total_steps: int, anneal_steps: int):
        self.inner = as_schedule(inner)
        self.total_steps = _check_steps(total_steps, "total_steps")
        self.anneal_steps = _check_steps(anneal_steps, "anneal_steps")
        if anneal_steps > total_steps:
            raise ValueError(f"anneal_steps must be <= total_steps = {total_steps}, got {anneal_steps}")

    @property
    def peak(self) -> float | None:
        return self.inner.peak

    def __call__(self, t: int) -> float:
        start = self.total_steps - self.anneal_steps
        if t < start:
            factor = 1.0
        elif t >= self.total_steps:
            factor = 0.0
        else:
            factor = (self.total_steps - t) / self.anneal_steps
        return self.inner(t) * factor


class FromCallable(Schedule):
    """A user function ``fn(t) -> rho``; every value is checked to be in [0, 1)
    (and at most ``peak``, when given: the largest value ``fn`` takes)."""

    def __init__(self, fn: Callable[[int], float], peak: float | None = None):
        if not callable(fn):
            raise TypeError(f"a schedule must be a number, a Schedule or a callable, got {type(fn).__name__}")
        self.fn = fn
        self._peak = None if peak is None else _check_rho(peak, "peak")

    @property
    def peak(self) -> float | None:
        return self._peak

    def __call__(self, t: int) -> float:
        rho = _check_rho(self.fn(t), f"the schedule's value at step {t}")
        if self._peak is not None and rho > self._peak:
            raise ValueError(f"the schedule's value at step {t} is {rho!r}, above its declared peak {self._peak!r}")
        return rho


ScheduleLike = Union[Schedule, float, Callable[[int], float]]


def as_schedule(value: ScheduleLike) -> Schedule:
    """A number is a :class:`Constant`; a Schedule is itself; a callable is wrapped."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Constant(value)
    return FromCallable(value)
