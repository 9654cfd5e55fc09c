"""Every code block of README.md and docs/*.md runs (see doc_blocks.py for
the marks): Python blocks page by page in one namespace that holds a small
classification set-up, scripts in a process of their own, blocks marked by
name in the tests that own them; shell blocks name scripts and commands that
exist; the evaluation tables equal what the saved records give."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from doc_blocks import PAGES, ROOT, blocks, table_after

pytestmark = pytest.mark.docs

# Blocks tested by a test of their own: (page, mark) -> that test.
NAMED = {
    ("README.md", "quickstart"): ("tests/test_sampler.py", "test_readme_quickstart_runs_as_written"),
    ("docs/integrations.md", "lightning"): ("tests/test_integrations.py", "test_readme_lightning_snippet_runs_as_written"),
    ("docs/integrations.md", "accelerate"): ("tests/test_integrations.py",
                                             "test_readme_accelerate_snippet_runs_as_written"),
    ("docs/integrations.md", "transformers"): ("tests/test_integrations.py",
                                               "test_readme_transformers_snippet_runs_as_written"),
}
SPECIAL = {"run: script", "requires: cuda"}


def _rel(page) -> str:
    return str(page.relative_to(ROOT))


def _all():
    return [b for page in PAGES for b in blocks(page)]


def _setup() -> dict:
    """What the pages' blocks assume: train_set (600 examples, 10 features, 4
    classes), a linear model, its optimiser, F, epochs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 4)
    return {"train_set": TensorDataset(x, y), "model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
            "F": F, "epochs": 2, "__name__": "__doc__"}


def test_every_named_block_has_its_test_and_every_block_a_known_language():
    marks = {(_rel(b.page), b.mark) for b in _all() if b.mark and b.mark not in SPECIAL}
    assert marks == set(NAMED), "a block marked by name needs its test in NAMED (and the reverse)"
    for path, test in NAMED.values():
        assert f"def {test}(" in (ROOT / path).read_text()
    assert {b.lang for b in _all() if not b.lang.startswith("{")} <= {"python", "bash", "text"}, "a block in a language the tests do not run"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "python" and not b.mark for b in blocks(p))],
                         ids=_rel)
def test_python_blocks_of_a_page_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    env = _setup()
    for b in blocks(page):
        if b.lang == "python" and not b.mark:
            exec(compile(b.code, b.name, "exec"), env)
    out = capsys.readouterr().out
    assert "False" not in out.split(), f"{_rel(page)} printed a failed check:\n{out}"


@pytest.mark.parametrize("block", [b for b in _all() if b.mark == "run: script"], ids=lambda b: b.name)
def test_script_blocks_run(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block.code)
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "False" not in p.stdout.split() and p.stdout.strip(), p.stdout


@pytest.mark.cuda
@pytest.mark.parametrize("block", [b for b in _all() if b.mark == "requires: cuda"], ids=lambda b: b.name)
def test_cuda_blocks_run(block, tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.name, "exec"), _setup())


@pytest.mark.parametrize("block", [b for b in _all() if b.lang == "bash"], ids=lambda b: b.name)
def test_shell_blocks_name_what_exists(block):
    """Scripts exist and are executable; ``python -m hardmix`` commands parse
    (run with --help appended, which parses every argument before it)."""
    for line in block.code.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        for cmd in line.split("&&"):
            words = shlex.split(cmd)
            if words[0] == "pip":
                assert words[1] in ("install", "wheel"), line
            elif words[0].startswith("scripts/"):
                assert os.access(ROOT / words[0], os.X_OK), f"{words[0]} is not an executable script"
            elif words[:3] == ["python", "-m", "hardmix"]:
                p = subprocess.run([sys.executable, "-m", "hardmix", *words[3:], "--help"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120)
                assert p.returncode == 0, f"{line}: {p.stderr[-2000:]}"
            elif words[:3] == ["python", "-m", "pytest"]:
                assert (ROOT / words[3]).exists(), line
            elif words[0] == "python" and words[1].endswith(".py"):
                assert (ROOT / words[1]).is_file(), line
            else:
                raise AssertionError(f"{block.name}: a shell command the tests do not know: {line}")


@pytest.mark.parametrize("page", [p for p in PAGES if "<!-- eval: final -->" in p.read_text()], ids=_rel)
def test_evaluation_tables_are_the_saved_records(page):
    from hardmix.evaluation.suite import BASELINE, deltas

    records = json.loads((ROOT / "benchmarks" / "results" / "eval.json").read_text())
    rows = table_after(page, "eval: final")
    methods = [c.strip() for c in rows[0].strip("|").split("|")[2:]]
    keep = set(methods) | set(BASELINE.values())
    assert deltas([r for r in records if r["method"] in keep]).split("\n") == rows


def test_demo_table_is_what_the_demo_prints(tmp_path):
    from hardmix import demo

    page = ROOT / "docs" / "evaluation.md"
    rows = table_after(page, "demo: seed 0")
    p = subprocess.run([sys.executable, "-m", "hardmix", "demo", "--no-plot", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().split("\n")[: len(rows)] == rows
    assert rows[0] == demo.table([]).split("\n")[0]
