"""Shared fixtures of the pytest-benchmark suites in this folder.

Suites whose ratios are near 1 (the sampler's, the loop's, margin's) are
*interleaved*: parametrized by ``rep`` so that pytest runs rep 0 of every
implementation of a group, then rep 1, and so on, each continuing the same
warmed-up state (the ``prepared`` fixture keeps it between tests). The speed
of a shared machine drifts over seconds; interleaving spreads that drift over
every implementation alike, and table.py divides each rep by the anchor's
same rep.

Every benchmark records in ``benchmark.extra_info``: ``family`` (one table of
``benchmarks/table.py``), ``params`` (the row), ``impl`` (the column) and
``anchor`` (the impl of the same pytest-benchmark group that the others are
divided by) and ``rep``.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Benchmarks run on one intra-op thread: the targets are per-core figures,
    and the shared 2-core machines are too noisy for parallel timings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def smoke(benchmark) -> bool:
    """True under ``--benchmark-disable`` (each target runs once, untimed): the
    suites then shrink their set-up (warm-up steps, sizes) so that the smoke
    test checks the code paths in seconds."""
    return bool(benchmark.disabled)


@pytest.fixture(scope="module")
def prepared():
    """A dict kept for the whole module: the warmed-up state of each
    implementation, reused by its later reps (see :class:`Prepared`)."""
    return Prepared()


class Prepared(dict):
    """Warmed-up states by key; :meth:`of` keeps one group's in memory at a time."""

    def of(self, group, name, make):
        """``self[group, name]``, made by ``make()`` the first time, after
        freeing the states of every other group (an earlier test's, a
        previous size's)."""
        if (group, name) not in self:
            for k in [k for k in self if not (isinstance(k, tuple) and len(k) == 2 and k[0] == group)]:
                del self[k]
            self[group, name] = make()
        return self[group, name]


@pytest.fixture
def tag(benchmark):
    """``tag(family, params, impl, anchor, rep=None, **extra)``: names the group (one per
    family and params: a figure and its anchor are always in the same group)
    and fills extra_info for table.py and plot.py."""

    def tag(family: str, params: str, impl: str, anchor: str, rep: int | None = None, **extra) -> None:
        benchmark.group = f"{family} {params}"
        benchmark.extra_info.update(family=family, params=params, impl=impl, anchor=anchor, rep=rep,
                                    torch=torch.__version__, **extra)

    return tag
