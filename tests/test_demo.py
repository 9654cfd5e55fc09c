"""The demo and the evaluation suite, CI-sized: they run, their figures are
finite and in range, and replay with memory beats no memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")

from hardmix import demo  # noqa: E402


@pytest.fixture(scope="module")
def results():
    stream = demo.make_stream("digits", 0)
    return {m: demo.run(stream, m, 0, epochs=3) for m in ("none", "reservoir", "hardmix")}


def test_figures_are_finite_and_in_range(results):
    for m, r in results.items():
        for v in (r.final_acc, r.worst_class_acc, r.balanced_acc):
            assert math.isfinite(v) and 0.0 <= v <= 1.0, (m, v)
        assert math.isfinite(r.forgetting) and -1.0 <= r.forgetting <= 1.0
        assert r.worst_class_acc <= r.balanced_acc + 1e-12
        assert r.reservoir_noisy_frac is None
        assert len(r.curve_task_acc) == len(r.curve_steps) == len(r.curve_hist) > 0
        assert r.task_ends == sorted(r.task_ends) and len(r.task_ends) == 5
    assert sum(results["hardmix"].reservoir_classes) == 200


def test_memory_beats_no_memory(results):
    """Seed 0, 3 epochs per task: none 0.20, reservoir 0.87, hardmix 0.89."""
    assert results["reservoir"].final_acc > results["none"].final_acc
    assert results["hardmix"].final_acc > results["none"].final_acc + 0.3


def test_noise_protocol_reports_mislabeled_shares():
    s = demo.make_stream("digits-noise20", 1)
    assert 0.15 < float(s.noisy.float().mean()) < 0.25
    assert bool((s.y_train[s.noisy] != s.true_train[s.noisy]).all())
    assert bool((s.y_train[~s.noisy] == s.true_train[~s.noisy]).all())
    r = demo.run(s, "hardmix", 1, epochs=1)
    assert 0.0 <= r.reservoir_noisy_frac <= 1.0 and r.stream_noisy_frac == float(s.noisy.float().mean())


def test_imbalance_protocol_thins_half_the_classes():
    s = demo.make_stream("digits-imbalance", 2)
    full = demo.make_stream("digits", 2)
    counts, base = s.y_train.bincount(minlength=10), full.y_train.bincount(minlength=10)
    share = counts.double() / base.double()
    assert int((share < 0.26).sum()) == 5 and int((share == 1).sum()) == 5


def test_eval_cli_writes_the_records(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "hardmix", "eval", "--seeds", "1", "--protocols", "digits,fmnist",
                           "--epochs", "1", "--json", str(out), "--fmnist-dir", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "fmnist: skipped: no Fashion-MNIST" in proc.stderr
    records = json.loads(out.read_text())
    assert {r["method"] for r in records} == {"none", "reservoir", "hardmix", "greedy"}
    for r in records:
        assert set(r) == {"protocol", "method", "seed", "final_acc", "forgetting", "worst_class_acc",
                          "reservoir_noisy_frac"}
        assert r["protocol"] == "digits" and r["seed"] == 0 and r["reservoir_noisy_frac"] is None
    assert "| digits | hardmix |" in proc.stdout
