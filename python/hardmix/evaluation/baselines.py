"""The baselines, written without hardmix: what a user would write instead.

Each is a plain training loop that reads in one screen. They share only the
stream, the model and the monitor with the hardmix methods, and every step
has the batch composition hardmix's has: ``B - m`` fresh examples and
``m = round(replay_fraction * B)`` replayed (fewer while the memory is
short, and in proportion in an epoch's last, short batch).

- :func:`er`: experience replay. The memory is filled by classic reservoir
  sampling (Vitter's algorithm R over every fresh example as it arrives,
  repeats included, so an example seen in several epochs can hold two
  entries, as in the usual implementations); each step adds a uniform draw of
  m memory entries (without replacement) to the fresh ones.
- :func:`er_balanced` (``balanced=True``): a class-balanced memory, GDumb's
  greedy rule: a new example (not already stored) enters while there is
  room, or in place of a random member of the largest class when its own
  class holds fewer.
- :func:`joint`: every task's data shuffled together, the same number of
  passes over each example (continual protocols' upper bound).
- :func:`plain`: i.i.d. training with a shuffled loader, batches of B, the
  same number of steps as the other methods.
- :func:`finetune`: the tasks in order, fresh data only (the lower bound).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .metrics import Monitor, Result
from .streams import Stream, make_model


def _setup(stream: Stream, seed: int):
    model = make_model(stream, seed)
    return model, torch.optim.Adam(model.parameters(), lr=stream.protocol.lr)


def _sgd_step(model, opt, x, y) -> None:
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def er(stream: Stream, seed: int, monitor: Monitor, *, balanced: bool = False) -> Result:
    p, X, Y = stream.protocol, stream.x_train, stream.y_train
    model, opt = _setup(stream, seed)
    g = torch.Generator().manual_seed(seed)
    m = math.floor(p.replay_fraction * p.batch_size + 0.5)
    f = p.batch_size - m
    memory: list[int] = []  # dataset indices
    seen = 0
    by_class: dict[int, list[int]] = {}  # balanced: the memory's positions of each class
    stored: set[int] = set()  # balanced: the memory's indices
    for task in stream.tasks:
        monitor.task_start(p.epochs * math.ceil(len(task) / f))
        for fresh in _shuffled_batches(task, f, p.epochs, g):
            k = min(len(memory), round(m * len(fresh) / f))
            picks = torch.randperm(len(memory), generator=g)[:k]
            idx = torch.cat([fresh, torch.tensor(memory, dtype=torch.int64)[picks]])
            _sgd_step(model, opt, X[idx], Y[idx])
            for i in fresh.tolist():
                seen += 1
                if balanced:
                    _greedy_balanced(memory, by_class, stored, i, int(Y[i]), p.capacity, g)
                elif len(memory) < p.capacity:
                    memory.append(i)
                else:
                    j = int(torch.randint(seen, (1,), generator=g))
                    if j < p.capacity:
                        memory[j] = i
            monitor.step(model, memory)
        monitor.task_end(model)
    return monitor.finish(model, memory)


def _greedy_balanced(memory: list[int], by_class: dict[int, list[int]], stored: set[int], i: int, c: int,
                     capacity: int, g: torch.Generator) -> None:
    if i in stored:  # (distinct examples only)
        return
    if len(memory) < capacity:
        by_class.setdefault(c, []).append(len(memory))
        memory.append(i)
        stored.add(i)
        return
    largest = max(by_class, key=lambda k: (len(by_class[k]), -k))
    if len(by_class.get(c, ())) < len(by_class[largest]):
        spots = by_class[largest]
        spot = spots.pop(int(torch.randint(len(spots), (1,), generator=g)))
        stored.discard(memory[spot])
        memory[spot] = i
        stored.add(i)
        by_class.setdefault(c, []).append(spot)


def er_balanced(stream: Stream, seed: int, monitor: Monitor) -> Result:
    return er(stream, seed, monitor, balanced=True)


def _shuffled_batches(data: torch.Tensor, size: int, epochs: int, g: torch.Generator):
    """``epochs`` passes over ``data`` (dataset indices), each in a seeded
    shuffle drawn when the pass begins, in batches of ``size``."""
    for _ in range(epochs):
        yield from data[torch.randperm(len(data), generator=g)].split(size)


def _shuffled_epochs(model, opt, stream: Stream, data: torch.Tensor, g: torch.Generator, monitor: Monitor) -> None:
    p = stream.protocol
    for idx in _shuffled_batches(data, p.batch_size, p.epochs, g):
        _sgd_step(model, opt, stream.x_train[idx], stream.y_train[idx])
        monitor.step(model)


def joint(stream: Stream, seed: int, monitor: Monitor) -> Result:
    model, opt = _setup(stream, seed)
    g = torch.Generator().manual_seed(seed)
    _shuffled_epochs(model, opt, stream, torch.cat(stream.tasks), g, monitor)
    for _ in stream.tasks:  # every task "ends" with the model trained on all of them
        monitor.task_end(model)
    return monitor.finish(model)


def finetune(stream: Stream, seed: int, monitor: Monitor) -> Result:
    p = stream.protocol
    model, opt = _setup(stream, seed)
    g = torch.Generator().manual_seed(seed)
    for task in stream.tasks:
        monitor.task_start(p.epochs * math.ceil(len(task) / p.batch_size))
        _shuffled_epochs(model, opt, stream, task, g, monitor)
        monitor.task_end(model)
    return monitor.finish(model)


def iid_steps(stream: Stream) -> int:
    """The step budget of an i.i.d. protocol: ``epochs`` epochs of batches of B."""
    p = stream.protocol
    return p.epochs * math.ceil(len(stream.tasks[0]) / p.batch_size)


def plain(stream: Stream, seed: int, monitor: Monitor) -> Result:
    p, X, Y = stream.protocol, stream.x_train, stream.y_train
    model, opt = _setup(stream, seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=p.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    budget = iid_steps(stream)
    monitor.task_start(budget)
    while monitor.steps < budget:
        for x, y in loader:
            _sgd_step(model, opt, x, y)
            monitor.step(model)
            if monitor.steps == budget:
                break
    monitor.task_end(model)
    return monitor.finish(model)
