"""hardmix inside training frameworks, against the real packages: Lightning,
Accelerate and the transformers Trainer (resume in a new process mid-epoch
and at an epoch's end, with 0 and 2 workers; two processes on gloo for
Lightning and the Trainer; settings that would give wrong batches refused;
the snippets of docs/integrations.md run as written)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types

import pytest
import torch

import hardmix
from doc_blocks import named

pytestmark = pytest.mark.integration
HERE = os.path.dirname(os.path.abspath(__file__))


def _script(name: str, out: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, os.path.join(HERE, name), out, *args], capture_output=True, text=True,
                       timeout=600, env=env)
    if ok and p.returncode != 0:
        raise AssertionError(f"{name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# --- Lightning ----------------------------------------------------------------


STOPS = (17, 30)  # mid-epoch; the end of epoch 0 (30 batches per epoch)


def _full_runs(script: str, d) -> dict:
    """Uninterrupted runs with 0 and 2 workers, saving checkpoints at STOPS."""
    out = {}
    for w in (0, 2):
        _script(script, str(d / f"full{w}.pt"), "--workers", str(w), "--save-at", ",".join(map(str, STOPS)),
                "--ckpt-dir", str(d / f"ck{w}"))
        out[w] = torch.load(d / f"full{w}.pt")
        out[w]["ckpt"] = d / f"ck{w}"
    return out


@pytest.fixture(scope="module")
def lightning_full(tmp_path_factory):
    pytest.importorskip("lightning")
    return _full_runs("lightning_loop.py", tmp_path_factory.mktemp("lightning"))


def test_lightning_runs_every_epoch_whole(lightning_full):
    for run in lightning_full.values():
        assert run["lens"] == [30, 30, 30] and len(run["batches"]) == 90  # 240 fresh, 8 per batch
        fresh = [i for b in run["batches"][:30] for i in b[:8]]
        assert sorted(fresh) == list(range(240))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", STOPS)
def test_lightning_resume_in_a_new_process_is_exact(lightning_full, tmp_path, workers, stop):
    full = lightning_full[workers]
    _script("lightning_loop.py", str(tmp_path / "b.pt"), "--workers", str(workers), "--resume",
            str(full["ckpt"] / f"step{stop}.ckpt"))
    b = torch.load(tmp_path / "b.pt")
    assert b["batches"] == full["batches"][stop:]
    assert torch.equal(b["members"], full["members"])
    assert set(b["lens"]) == {30}


def _check_two_ranks(r0: dict, r1: dict, lens) -> None:
    assert r0["lens"] == r1["lens"] == lens  # 120 fresh per rank, 8 per batch
    assert torch.equal(r0["members"], r1["members"])  # one reservoir
    for b0, b1 in zip(r0["batches"][:15], r1["batches"][:15]):
        assert not set(b0[:8]) & set(b1[:8])  # disjoint fresh parts
    fresh = [i for r in (r0, r1) for b in r["batches"][:15] for i in b[:8]]
    assert sorted(fresh) == list(range(240))


def test_lightning_ddp_two_processes_and_resume(tmp_path):
    pytest.importorskip("lightning")
    _script("lightning_loop.py", str(tmp_path / "r.pt"), "--devices", "2", "--save-at", "7", "--ckpt-dir",
            str(tmp_path / "ck"))
    full = [torch.load(tmp_path / f"r.pt.{r}") for r in (0, 1)]
    _check_two_ranks(*full, [15, 15, 15])
    _script("lightning_loop.py", str(tmp_path / "b.pt"), "--devices", "2", "--resume",
            str(tmp_path / "ck" / "step7.ckpt"))
    for r in (0, 1):  # the checkpoint (written by rank 0) holds every rank's sampler
        b = torch.load(tmp_path / f"b.pt.{r}")
        assert b["batches"] == full[r]["batches"][7:] and torch.equal(b["members"], full[r]["members"])


def _trainer(world: int, rank: int, distributed_sampler: bool = False):
    return types.SimpleNamespace(world_size=world, global_rank=rank,
                                 _accelerator_connector=types.SimpleNamespace(
                                     use_distributed_sampler=distributed_sampler))


def test_lightning_callback_checks_the_sampler_against_the_trainer():
    pytest.importorskip("lightning")
    from hardmix.integrations.lightning import ReplayCallback

    built = ReplayCallback(hardmix.ReplaySampler(40, batch_size=8, capacity=12))
    with pytest.raises(ValueError, match=r"built for 1 process\(es\) as rank 0, and this Trainer runs 2 as rank 1"):
        built.setup(_trainer(2, 1), None, "fit")
    later = ReplayCallback(lambda: hardmix.ReplaySampler(40, batch_size=8, capacity=12, num_replicas=2, rank=1))
    with pytest.raises(RuntimeError, match="not built yet"):
        later.sampler
    assert later.state_dict() == {}
    later.setup(_trainer(2, 1), None, "fit")
    assert later.sampler.rank == 1 and later.sampler.num_replicas == 2
    with pytest.raises(TypeError, match="must be a ReplaySampler or a function"):
        ReplayCallback(3)
    two = ReplayCallback(lambda: hardmix.ReplaySampler(40, batch_size=8, capacity=12, num_replicas=2, rank=0))
    with pytest.raises(ValueError, match=r"use_distributed_sampler=True.*Trainer\(use_distributed_sampler=False\)"):
        two.setup(_trainer(2, 0, distributed_sampler=True), None, "fit")


# --- Accelerate ---------------------------------------------------------------


@pytest.fixture(scope="module")
def accelerate_full(tmp_path_factory):
    pytest.importorskip("accelerate")
    return _full_runs("accelerate_loop.py", tmp_path_factory.mktemp("accelerate"))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", STOPS)
def test_accelerate_resume_in_a_new_process_is_exact(accelerate_full, tmp_path, workers, stop):
    full = accelerate_full[workers]
    assert full["lens"] == [30, 30, 30] and len(full["batches"]) == 90
    _script("accelerate_loop.py", str(tmp_path / "b.pt"), "--workers", str(workers), "--resume",
            str(full["ckpt"] / f"step{stop}"))
    b = torch.load(tmp_path / "b.pt")
    assert b["batches"] == full["batches"][stop:]
    assert torch.equal(b["members"], full["members"])
    assert b["lens"] == [30] * (3 - stop // 30)


def _torchrun(script: str, out: str, *args: str) -> None:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), os.path.join(HERE, script), out, *args],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


def test_accelerate_two_processes_and_resume(tmp_path):
    pytest.importorskip("accelerate")
    _torchrun("accelerate_loop.py", str(tmp_path / "r.pt"), "--save-at", "17", "--ckpt-dir", str(tmp_path / "ck"))
    full = [torch.load(tmp_path / f"r.pt.{r}") for r in (0, 1)]
    _check_two_ranks(*full, [15, 15, 15])
    _torchrun("accelerate_loop.py", str(tmp_path / "b.pt"), "--resume", str(tmp_path / "ck" / "step17"))
    for r in (0, 1):
        b = torch.load(tmp_path / f"b.pt.{r}")
        assert b["batches"] == full[r]["batches"][17:] and torch.equal(b["members"], full[r]["members"])


def test_accelerate_wrappers_that_shard_or_skip_are_refused():
    pytest.importorskip("accelerate")
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler

    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12)
    with pytest.raises(RuntimeError, match="wrapped in a BatchSamplerShard"):
        next(iter(BatchSamplerShard(s, num_processes=2, process_index=0)))
    with pytest.raises(RuntimeError, match="iterated by a SkipBatchSampler"):
        next(iter(SkipBatchSampler(s, skip_batches=3)))


def test_accelerate_load_state_changes_nothing_when_a_load_fails(tmp_path):
    pytest.importorskip("accelerate")
    from hardmix.integrations import accelerate as hm_accelerate

    class Broken:
        process_index = 0

        def save_state(self, output_dir, **kw):
            return output_dir

        def load_state(self, input_dir, **kw):
            raise OSError("disk gone")

    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    it = iter(s)
    for _ in range(3):
        b = torch.tensor(next(it))
        s.update(b, (b % 5).float())
    hm_accelerate.save_state(Broken(), tmp_path, sampler=s)
    t = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    with pytest.raises(OSError, match="disk gone"):
        hm_accelerate.load_state(Broken(), tmp_path, sampler=t)
    assert t.step == 0 and next(iter(t)) == next(iter(hardmix.ReplaySampler(40, batch_size=8, capacity=12)))
    with pytest.raises(FileNotFoundError, match="no sampler state at"):
        hm_accelerate.load_state(Broken(), tmp_path / "elsewhere", sampler=t)


# --- transformers --------------------------------------------------------------

HF_RUNS = {0: ("1", (17, 30)), 2: ("4", (5, 8))}  # workers: (gradient accumulation, optimizer steps saved)


@pytest.fixture(scope="module")
def hf_full(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf")
    out = {}
    for w, (ga, stops) in HF_RUNS.items():
        _script("hf_loop.py", str(d / f"full{w}.pt"), "--workers", str(w), "--accumulate", ga,
                "--save-at", ",".join(map(str, stops)), "--ckpt-dir", str(d / f"ck{w}"))
        out[w] = torch.load(d / f"full{w}.pt")
        out[w]["ckpt"] = d / f"ck{w}"
    return out


def test_hf_trainer_epochs_are_whole_accumulation_steps(hf_full):
    assert hf_full[0]["lens"] == 30 and len(hf_full[0]["batches"]) == 90
    assert hf_full[2]["lens"] == 32 and len(hf_full[2]["batches"]) == 96  # 30 rounded up to 8 steps of 4


@pytest.mark.parametrize("workers", sorted(HF_RUNS))
@pytest.mark.parametrize("which", [0, 1])  # mid-epoch; the end of epoch 0
def test_hf_trainer_resume_in_a_new_process_is_exact(hf_full, tmp_path, workers, which):
    ga, stops = HF_RUNS[workers]
    full, stop = hf_full[workers], stops[which]
    _script("hf_loop.py", str(tmp_path / "b.pt"), "--workers", str(workers), "--accumulate", ga, "--resume",
            str(full["ckpt"] / f"checkpoint-{stop}"), "--ckpt-dir", str(tmp_path / "ck"))
    b = torch.load(tmp_path / "b.pt")
    assert b["batches"] == full["batches"][stop * int(ga):]
    assert torch.equal(b["members"], full["members"])


def test_hf_trainer_two_processes_and_resume(tmp_path):
    pytest.importorskip("transformers")
    _torchrun("hf_loop.py", str(tmp_path / "r.pt"), "--save-at", "7", "--ckpt-dir", str(tmp_path / "ck"))
    full = [torch.load(tmp_path / f"r.pt.{r}") for r in (0, 1)]
    _check_two_ranks(*full, 15)
    assert len(full[0]["batches"]) == len(full[1]["batches"]) == 45
    _torchrun("hf_loop.py", str(tmp_path / "b.pt"), "--resume", str(tmp_path / "ck" / "checkpoint-7"), "--ckpt-dir",
              str(tmp_path / "ck2"))
    for r in (0, 1):
        b = torch.load(tmp_path / f"b.pt.{r}")
        assert b["batches"] == full[r]["batches"][7:] and torch.equal(b["members"], full[r]["members"])


def test_hf_trainer_refuses_what_it_cannot_honour(tmp_path):
    transformers = pytest.importorskip("transformers")
    from hardmix.integrations.transformers import ReplayTrainer, classification_losses

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="replay must be a dict of ReplaySampler arguments with 'capacity'"):
        ReplayTrainer(model=model, args=args, replay={})
    with pytest.raises(ValueError, match=r"replay\['seed'\] comes from the Trainer's arguments"):
        ReplayTrainer(model=model, args=args, replay={"capacity": 4, "seed": 1})
    t = ReplayTrainer(model=model, args=args, replay={"capacity": 4})
    assert t.args.ignore_data_skip is True
    with pytest.raises(ValueError, match=r"logits \[B, C\] and labels \[B\].*pass per_example_loss"):
        classification_losses({"logits": torch.zeros(2, 3, 4)}, {"labels": torch.zeros(2, 3, dtype=torch.long)})


# --- the snippets of docs/integrations.md --------------------------------------


def _readme_block(marker: str) -> str:
    return named("docs/integrations.md", marker)


def _toy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 6, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), torch.nn.Linear(6, 2)


def test_readme_lightning_snippet_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    code = _readme_block("lightning").replace("num_workers=2", "num_workers=0")
    train_set, net = _toy()
    env = {"train_set": train_set, "net": net, "epochs": 2}
    exec(compile(code, "docs/integrations.md lightning", "exec"), env)
    s = env["replay"].sampler
    assert s.epoch == 1 and s.step == 2 * len(s) == 2 * 38  # 1200 fresh, 32 per batch
    ckpt = next(tmp_path.rglob("*.ckpt"))  # Lightning's own checkpoint carries the sampler
    assert "sampler" in torch.load(ckpt, weights_only=False)["callbacks"]["ReplayCallback"]


def test_readme_accelerate_snippet_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    monkeypatch.chdir(tmp_path)
    code = _readme_block("accelerate").replace("num_workers=2", "num_workers=0")
    train_set, net = _toy()
    env = {"train_set": train_set, "model": net, "opt": torch.optim.SGD(net.parameters(), lr=0.1), "epochs": 2,
           "resume_dir": None}
    exec(compile(code, "docs/integrations.md accelerate", "exec"), env)
    first = env["sampler"]
    assert first.epoch == 1 and first.step == 2 * 38
    train_set, net = _toy()
    env = {"train_set": train_set, "model": net, "opt": torch.optim.SGD(net.parameters(), lr=0.1), "epochs": 2,
           "resume_dir": "checkpoints/epoch0"}
    exec(compile(code, "docs/integrations.md accelerate", "exec"), env)  # resumes after epoch 0: runs epoch 1 only
    assert env["sampler"].step == first.step and env["start"] == 1


def test_readme_transformers_snippet_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    code = _readme_block("transformers")
    ds, _ = _toy()

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return {"x": ds[i][0], "labels": ds[i][1]}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 2)

        def forward(self, x, labels=None):
            return {"logits": self.lin(x)}

    env = {"train_set": Items(), "model": Net(), "epochs": 2}
    exec(compile(code, "docs/integrations.md transformers", "exec"), env)
    s = env["trainer"].replay_sampler
    assert s.epoch == 1 and s.step == 2 * 38
    assert sorted(os.listdir(tmp_path / "out" / "checkpoint-38"))[0] == "hardmix_sampler_0.pt"
    resumed = code.replace("trainer.train()", "trainer.train(resume_from_checkpoint=True)")
    env = {"train_set": Items(), "model": Net(), "epochs": 3}
    exec(compile(resumed, "docs/integrations.md transformers", "exec"), env)  # from checkpoint-76: epoch 2 only
    assert env["trainer"].replay_sampler.step == 3 * 38
