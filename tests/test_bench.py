"""`python -m hardmix bench` machinery at toy sizes: it runs, the three
implementations see the same stream, and the JSON records have the promised keys."""

import json

import pytest

from hardmix import bench


@pytest.mark.parametrize("C", [None, 5])
def test_step_records_and_same_stream(C):
    recs = {impl: bench.bench_step(impl, B=32, R=64, N=500, C=C, m=8, steps=4) for impl in ("native", "reference", "torch")}
    for impl, r in recs.items():
        assert r["impl"] == impl and r["what"] == "step" and r["median_us"] > 0 and r["reps"] == 4
    # the native engine and the reference are the same policy: same admissions
    assert recs["native"]["admitted_per_step"] == recs["reference"]["admitted_per_step"]


def test_main_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "cases", lambda quick, impls: iter([
        ("step", dict(impl="native", B=16, R=32, N=100, C=None, m=4)),
        ("step", dict(impl="reference", B=16, R=32, N=100, C=None, m=4)),
        ("margin", dict(impl="native", B=8, C=10)),
        ("margin", dict(impl="amax", B=8, C=10)),
    ]))
    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--steps", "2", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [r["impl"] for r in records] == ["native", "reference", "native", "torch-amax"]
    for r in records:
        assert set(r) >= {"impl", "what", "B", "R", "N", "C", "m", "median_us"}
    out = capsys.readouterr().out
    assert "| step | reference | 16 | 32 | 100 |" in out
