"""One full policy step (update of B examples, then the replay draw of m) for
the native engine, the pure-Python reference and a torch composition, across
the reservoir capacity R (the data for a "time per step against R" plot).

    .venv/bin/python -m pytest benchmarks/test_bench_step.py --benchmark-json out/bench-step.json
    .venv/bin/python benchmarks/table.py out/bench-step.json

B = 1024, m = 256, N = 10^6, no logits, R = 2^12 .. 2^20. The workload is
``hardmix.bench.prepare_step``'s (the same as ``python -m hardmix bench``):
the reservoir filled with min(R, N) examples and stepped 10 times, then every
implementation runs the same timed batches (for R < N the busy phase:
hundreds of admissions per step; at R = 2^20 > N every example is a member,
so a step rescores and admits nothing). One intra-op thread; medians over
the timed steps (fewer at R >= 2^18, where the reference and the torch composition take tens
to hundreds of milliseconds a step and the reference's fill takes the longest).

Family "step", one group per R. Anchor: ``native`` (``hardmix.Engine``).
Against it: ``reference`` (``hardmix.ReferencePolicy``) and ``torch``
(``hardmix.bench.TorchPolicy``).

Family "step against R", one group: the native step at R = 2^18 and 2^20
against R = 65536 (the anchor), interleaved (conftest.py: SCALE_REPS reps of
SCALE_ROUNDS steps, each R continuing its own stream), so that
how the step grows with R is read within one run.

Family "step with classes", one group per (R, C): R = 2^13, 2^16, 2^18 with
C = 10, and R = 2^16 with C = 1000 (where each eviction under class quotas
needs the largest of many classes): the native step with C classes (logits
and targets, so margins and classes) under
the sampler's policy (``SAMPLER_DEFAULTS``), at the cost of its class knobs,
interleaved as above (CLASS_REPS reps of CLASS_ROUNDS steps). Anchor:
``classes`` (class quotas and balanced replay off). Against it: ``quotas``
(``class_quotas``: one eviction heap per class); ``quotas+balance``
(``balance_replay`` too, its class factors recomputed every
max(1, R // (4B)) steps: what ReplaySampler runs once it knows the class
count; the median leaves those steps out where they are rarer than one in
two); ``reweight every step``: the same recomputing them every step
(``reweight_every=1``, PolicyConfig's default), each time rewriting all R
leaves of the sum tree.
"""

import pytest

from hardmix.bench import _step, prepare_step
from hardmix.sampler import SAMPLER_DEFAULTS

B, M, N = 1024, 256, 10**6
RS = [4096, 16384, 65536, 262144, 1048576]
SCALE_RS = [65536, 262144, 1048576]  # the first is the anchor
SCALE_REPS, SCALE_ROUNDS = 5, 20
CLASS_CASES = [(8192, 10), (65536, 10), (262144, 10), (65536, 1000)]  # (R, C)
CLASS_KNOBS = {"classes": {}, "quotas": {"class_quotas": True},  # (the first is the anchor)
               "quotas+balance": {"class_quotas": True, "balance_replay": True},  # (+ the sampler's reweight_every)
               "reweight every step": {"class_quotas": True, "balance_replay": True, "reweight_every": 1}}
CLASS_REPS, CLASS_ROUNDS = 5, 20


def _stepper(impl, policy, stream, m):
    """One round: the next step of ``stream`` on ``policy``."""
    it = iter(stream)

    def one_step():
        i, l, lg, tg, nxt = next(it)
        _step(impl, policy, i, l, lg, tg, m, nxt)

    return one_step


@pytest.mark.parametrize("R", RS)
@pytest.mark.parametrize("impl", ["native", "torch", "reference"])
def test_step(benchmark, tag, smoke, impl, R):
    steps = 20 if R <= 65536 else 10
    if smoke:  # the code path at toy sizes
        policy, stream = prepare_step(impl, 64, 256, 2000, None, 16, 1, warm=1)
        m = 16
    else:
        policy, stream = prepare_step(impl, B, R, N, None, M, steps)
        m = M
    tag("step", f"B={B} m={M} N=10^6 R={R}", impl, "native", B=B, R=R, N=N, C=None, m=M)
    benchmark.pedantic(_stepper(impl, policy, stream, m), rounds=len(stream), iterations=1)


# order of the tests: rep 0 of every R, then rep 1, ...
@pytest.mark.parametrize("R", SCALE_RS, ids=lambda R: f"R={R}")
@pytest.mark.parametrize("rep", range(SCALE_REPS))
def test_step_against_R(benchmark, tag, smoke, prepared, rep, R):
    if R not in prepared:
        if smoke:  # the code path at toy sizes
            policy, stream = prepare_step("native", 64, R // 1024, 2000, None, 16, SCALE_REPS, warm=1)
        else:
            policy, stream = prepare_step("native", B, R, N, None, M, SCALE_REPS * SCALE_ROUNDS)
        prepared[R] = _stepper("native", policy, stream, 16 if smoke else M)
    tag("step against R", f"native B={B} m={M} N=10^6", f"R={R}", f"R={SCALE_RS[0]}", rep=rep, B=B, R=R, N=N, m=M)
    benchmark.pedantic(prepared[R], rounds=1 if smoke else SCALE_ROUNDS, iterations=1)


# order of the tests: for each R, rep 0 of every knob set, then rep 1, ...
@pytest.mark.parametrize("knobs", list(CLASS_KNOBS))
@pytest.mark.parametrize("rep", range(CLASS_REPS))
@pytest.mark.parametrize("R,C", CLASS_CASES, ids=[f"R={R}-C={C}" for R, C in CLASS_CASES])
def test_step_with_classes(benchmark, tag, smoke, prepared, R, C, rep, knobs):
    def make():
        config = {**SAMPLER_DEFAULTS, "seed": 0, "num_classes": C, "reweight_every": max(1, R // (4 * B)),
                  **CLASS_KNOBS[knobs]}
        if smoke:  # the code path at toy sizes
            policy, stream = prepare_step("native", 64, R // 1024, 2000, C, 16, CLASS_REPS, warm=1, config=config)
        else:
            policy, stream = prepare_step("native", B, R, N, C, M, CLASS_REPS * CLASS_ROUNDS, config=config)
        return _stepper("native", policy, stream, 16 if smoke else M)

    one_step = prepared.of(("classes", R, C), knobs, make)
    tag("step with classes", f"native B={B} m={M} N=10^6 C={C} R={R}", knobs, "classes", rep=rep, B=B, R=R, N=N,
        C=C, m=M)
    benchmark.pedantic(one_step, rounds=1 if smoke else CLASS_ROUNDS, iterations=1)
