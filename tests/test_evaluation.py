"""The evaluation suite and the demo: the streams are what they claim, the
baselines owe nothing to hardmix, the records are complete, and hardmix with
every policy mechanism off is experience replay (paired over 20 seeds)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from hardmix import demo  # noqa: E402
from hardmix.evaluation import PROTOCOLS, make_stream, paired, run, streams  # noqa: E402
from hardmix.evaluation.suite import METHODS, report  # noqa: E402

pytestmark = pytest.mark.eval


def test_baselines_are_written_without_hardmix():
    src = Path(streams.__file__).with_name("baselines.py").read_text()
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in getattr(n, "names", [])}
    assert not any(m and m.split(".")[0] == "hardmix" for m in imported), imported
    assert all(m in (None, "metrics", "streams", "__future__", "math", "torch", "torch.nn.functional")
               for m in imported), imported


def test_class_incremental_tasks_follow_the_true_classes():
    s = make_stream("ci-digits-pair30", 1)
    assert 0.25 < float(s.noisy.float().mean()) < 0.35
    assert bool((s.y_train[s.noisy] == (s.y_true[s.noisy] + 1) % 10).all())  # pair flip
    for t, task in enumerate(s.tasks):
        assert set(s.y_true[task].unique().tolist()) == {2 * t, 2 * t + 1}
        assert set(s.y_test[s.test_tasks[t]].unique().tolist()) == {2 * t, 2 * t + 1}
    assert sum(len(t) for t in s.tasks) == len(s.y_train)


def test_symmetric_noise_imbalance_and_long_tail():
    s = make_stream("ci-digits-sym40", 2)
    assert 0.35 < float(s.noisy.float().mean()) < 0.45 and bool((s.y_train[s.noisy] != s.y_true[s.noisy]).all())
    full = make_stream("ci-digits", 2).y_train.bincount(minlength=10).double()
    share = make_stream("ci-digits-imbalance", 2).y_train.bincount(minlength=10).double() / full
    assert int((share < 0.26).sum()) == 5 and int((share == 1).sum()) == 5
    counts = make_stream("iid-digits-longtail", 2).y_train.bincount(minlength=10).sort(descending=True).values
    assert counts[0] / counts[-1] > 8 and bool((counts[:-1] >= counts[1:]).all())


def test_domain_incremental_permutes_each_task():
    s = make_stream("di-digits-permuted", 0)
    n = len(s.tasks[0])
    assert len(s.tasks) == 5 and torch.equal(s.y_train[:n], s.y_train[n : 2 * n])
    x0, x1 = s.x_train[:n], s.x_train[n : 2 * n]
    assert not torch.equal(x0, x1) and torch.equal(x0.sort(1).values, x1.sort(1).values)


def test_paired_interval():
    p = paired([0.5, 0.6, 0.7, 0.8], [0.4, 0.4, 0.6, 0.6])
    assert p["mean"] == pytest.approx(0.15) and p["wins"] == 4 and p["n"] == 4
    # t(0.975, 3) = 3.182, sd of (0.1, 0.2, 0.1, 0.2) = 0.0577
    assert p["hi"] - p["mean"] == pytest.approx(3.182 * 0.057735 / 2, rel=1e-3)


def test_reservoir_ablation_matches_experience_replay():
    """hardmix with alpha = lam = gamma = 0, no class balance and no strikes
    is experience replay: its final accuracy is er's within noise, paired
    over 20 seeds (a 99% interval of the paired difference holds 0, and the
    mean is within 3 points), on one epoch per task: tasks of about 16
    batches, shorter than a lag that is not measured would be."""
    proto = dataclasses.replace(PROTOCOLS["ci-digits"], epochs=1)
    er, ablation = [], []
    for seed in range(20):
        s = make_stream("ci-digits", seed)
        s.protocol = proto
        er.append(run(s, "er", seed).final_acc)
        ablation.append(run(s, "hardmix-reservoir", seed).final_acc)
    p = paired(ablation, er, level=0.99)
    assert p["lo"] < 0 < p["hi"] and abs(p["mean"]) < 0.03, p


@pytest.fixture(scope="module")
def demo_results():
    s = make_stream("ci-digits", 0)
    s.protocol = dataclasses.replace(s.protocol, epochs=3)
    return {m: run(s, m, 0, curve_points=3) for m in demo.METHODS}


def test_demo_figures_are_finite_and_in_range(demo_results):
    for m, r in demo_results.items():
        assert math.isfinite(r.final_acc) and math.isfinite(r.forgetting) and r.reservoir_noisy_frac is None
        assert len(r.curve_task_acc) == len(r.curve_steps) == len(r.curve_memory_classes) > 0
        assert r.task_ends == sorted(r.task_ends) and len(r.task_ends) == 5
    assert sum(demo_results["hardmix"].memory_classes) == 200
    assert demo_results["er"].final_acc > demo_results["finetune"].final_acc
    assert demo_results["hardmix"].final_acc > demo_results["finetune"].final_acc + 0.3
    assert "| hardmix |" in demo.table(list(demo_results.values()))


def test_eval_cli_writes_the_records(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "hardmix", "eval", "--quick", "--methods", "er,plain,hardmix",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    want = {(p, m) for p in streams.QUICK for m in ("er", "plain", "hardmix") if PROTOCOLS[p].kind in METHODS[m][0]}
    assert {(r["protocol"], r["method"]) for r in records} == want
    assert {r["seed"] for r in records} == {0, 1}
    for r in records:
        assert set(r) == {"protocol", "method", "seed", "final_acc", "forgetting", "worst_class_acc",
                          "reservoir_noisy_frac"}
        iid = PROTOCOLS[r["protocol"]].kind == "iid"
        assert (r["forgetting"] is None) == iid
        noisy = PROTOCOLS[r["protocol"]].noise != ""
        assert (r["reservoir_noisy_frac"] is None) == (not noisy or r["method"] == "plain")
    assert report(records) in proc.stdout and "| ci-digits | er 0." in proc.stdout
    again = subprocess.run([sys.executable, "-m", "hardmix", "eval", "--from", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip() == report(records)


def test_eval_skips_fashion_mnist_when_absent(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hardmix", "eval", "--seeds", "1", "--protocols",
                           "ci-fmnist,ci-fmnist-cnn", "--fmnist-dir", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ci-fmnist, ci-fmnist-cnn: skipped: no Fashion-MNIST" in proc.stderr

