"""Checkpoints, preemption and resume: a stopped job finishes as if it had never stopped."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOKE, run_cli, ue_sweep_env
from ue_sweep.config import (
    AugmentConfig,
    BatchSizeConfig,
    GeneratorConfig,
    ModelSpec,
    TrainingConfig,
)
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime import preemption
from ue_sweep.runtime.preemption import Preempted
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.tracking import ResultRecorder
from ue_sweep.store.checkpoint import (
    NO_CHECKPOINT,
    JobCheckpoints,
    StageCheckpoint,
    earlier_attempt,
    fingerprint,
)
from ue_sweep.store.sweep import PlannedJob
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun
from ue_sweep.uc.clustering import Clusters
from ue_sweep.uc.train_generators import ClusteredImages, train_generators


def test_fingerprint_follows_what_a_job_computes():
    cfg = {
        "seed": 0,
        "trainer": {"devices": 1, "progress": "bar", "timeout_s": 60},
        "logger": {"backend": "none"},
    }
    same = {
        "seed": 0,
        "trainer": {"devices": 1, "progress": "log", "timeout_s": 9},
        "logger": {"backend": "wandb"},
    }
    assert fingerprint(cfg, 1) == fingerprint(same, 1)
    assert fingerprint(cfg, 1) != fingerprint(cfg | {"seed": 1}, 1)
    assert fingerprint(cfg, 1) != fingerprint(cfg, 2)


def test_checkpoints_of_another_configuration_are_ignored(tmp_path):
    mine = StageCheckpoint(tmp_path / "stage.pt", "aaaa", writer=True)
    mine.save({"epoch": 3, "step": 0})
    assert mine.load()["epoch"] == 3
    assert StageCheckpoint(tmp_path / "stage.pt", "bbbb").load() is None
    reader = JobCheckpoints(tmp_path, "aaaa", writer=False)
    reader.stage("x").save({"v": 1})
    assert reader.stage("x").load() is None, "only the writing rank writes"


@pytest.mark.parametrize("content", ["[]", "null", '{"status": "comp', '"completed"'])
def test_an_odd_result_file_in_a_job_dir_is_no_earlier_attempt(tmp_path, content):
    # A re-run must not trip over a result.json it cannot have written (truncated, edited).
    (tmp_path / "result.json").write_text(content)
    assert ResultRecorder(tmp_path, {}).read() is None
    assert PlannedJob(0, [], tmp_path, "aaaa").completed_record() is None
    assert earlier_attempt([], "aaaa") is None


class _TouchOnLoad:
    """A pickle payload: unpickling it would create ``marker`` (weights_only must refuse it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _truncated(path: Path) -> None:
    torch.save({"epoch": 1, "step": 0, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])


# Damaged or foreign files in checkpoints/: each is named, moved aside and its stage restarted.
DAMAGED = {
    "truncated": _truncated,
    "empty": lambda path: path.write_bytes(b""),
    "random-bytes": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "pickle-payload": lambda path: path.write_bytes(
        pickle.dumps(_TouchOnLoad(path.parent / "payload-ran"))
    ),
    "foreign-tensor": lambda path: torch.save(torch.ones(3), path),
    "foreign-list": lambda path: torch.save([1, 2, 3], path),
}


def _untimed(record):
    if isinstance(record, dict):
        return {k: _untimed(v) for k, v in record.items() if "seconds" not in k}
    if isinstance(record, list):
        return [_untimed(v) for v in record]
    return record


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_checkpoint_is_moved_aside_and_its_stage_restarted(rt, tmp_path, caplog, damage):
    path = tmp_path / "checkpoints" / "victim.pt"
    path.parent.mkdir()
    damage(path)
    checkpoint = StageCheckpoint(path, "aaaa", writer=True)
    with caplog.at_level("WARNING", logger="ue_sweep.store.checkpoint"):
        restarted, result = _train_victim(rt, checkpoint)
    assert not (tmp_path / "checkpoints" / "payload-ran").exists(), "a pickle is never executed"
    (aside,) = path.parent.glob("victim.pt.corrupt-*")
    assert f"checkpoint {path} is unreadable" in caplog.text and aside.name in caplog.text
    fresh, expected = _train_victim(rt, NO_CHECKPOINT)
    assert _untimed(result) == _untimed(expected), "the stage started over from its beginning"
    for a, b in zip(restarted.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _StopAt:
    """Ask for preemption at the n-th step boundary (what the USR2 handler does)."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def __call__(self, rt) -> bool:
        self.calls += 1
        return self.calls == self.step


def _digits(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8), torch.arange(n) % 3


def _train_victim(rt, checkpoint) -> tuple[torch.nn.Module, dict]:
    images, labels = _digits()
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    result = train_classifier(
        model,
        LabelledData(images, labels, images[:20], labels[:20], 3),
        TrainingConfig(epochs=3, batch_size=16),
        AugmentConfig(1, True),
        TrainingRun(rt, seed=1, progress=Progress("none"), name="victim", checkpoint=checkpoint),
    )
    return model, result.as_dict()


def test_classifier_stopped_mid_epoch_resumes_to_the_same_model(rt, tmp_path, monkeypatch):
    reference, expected = _train_victim(rt, StageCheckpoint(None))
    checkpoint = StageCheckpoint(tmp_path / "victim.pt", "fp", writer=True)
    monkeypatch.setattr(preemption, "requested", _StopAt(step=8))  # epoch 1, step 2 of 6
    with pytest.raises(Preempted, match="checkpointed at step 2"):
        _train_victim(rt, checkpoint)
    saved = checkpoint.load()
    assert (saved["epoch"], saved["step"]) == (1, 2)
    monkeypatch.setattr(preemption, "requested", lambda rt: False)
    resumed, outcome = _train_victim(rt, checkpoint)
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for key in ("accuracy", "correct"):
        assert outcome[key] == expected[key]
    assert [h["train_loss"] for h in outcome["history"]] == pytest.approx(
        [h["train_loss"] for h in expected["history"]], rel=1e-12
    )


def _train_bank(rt, checkpoint, kind: str = "bank") -> GeneratorBank | DirectNoise:
    images, _ = _digits(48)
    torch.manual_seed(0)
    surrogate = (
        build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
        .eval()
        .requires_grad_(False)
    )
    clusters = Clusters(
        ids=torch.arange(48) % 3,
        centers=torch.randn(3, 16),
        targets=torch.tensor([1, 2, 0]),
        inertia=0.0,
    )
    torch.manual_seed(1)
    bank = (
        DirectNoise(3, 1, 8, eps=0.3, seed=1)
        if kind == "direct"
        else GeneratorBank(3, 1, 8, eps=0.3, ngf=4, n_blocks=1, n_downsampling=1)
    )
    train_generators(
        bank,
        surrogate,
        ClusteredImages(images, torch.zeros(len(images), dtype=torch.long), clusters),
        GeneratorConfig(epochs=3, lr=1e-2, eps=0.3, kind=kind, output=bank.output),
        BatchSizeConfig(per_device=16),
        AugmentConfig(1, True),
        TrainingRun(
            rt, seed=2, progress=Progress("none"), name="generators", checkpoint=checkpoint
        ),
    )
    return bank


@pytest.mark.parametrize("kind", ["bank", "direct"])
def test_generators_stopped_mid_epoch_resume_to_the_same_bank(rt, tmp_path, monkeypatch, kind):
    reference = _train_bank(rt, StageCheckpoint(None), kind)
    checkpoint = StageCheckpoint(tmp_path / "generators.pt", "fp", writer=True)
    monkeypatch.setattr(preemption, "requested", _StopAt(step=5))  # epoch 1, step 2 of 3
    with pytest.raises(Preempted):
        _train_bank(rt, checkpoint, kind)
    monkeypatch.setattr(preemption, "requested", lambda rt: False)
    resumed = _train_bank(rt, checkpoint, kind)
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


RESUMABLE = [*SMOKE, "generator.epochs=12", "victim.epochs=2"]


def _job_in_generator_epoch_2(tmp_path: Path, stderr: int) -> subprocess.Popen:
    """A RESUMABLE job in ``tmp_path/job``, returned once its generators finished epoch 2."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ue_sweep", *RESUMABLE, "hydra.run.dir=job"],
        cwd=tmp_path,
        env=ue_sweep_env(),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    log = tmp_path / "job" / "ue_sweep.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "generators epoch 2/" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    return proc


@pytest.mark.slow
def test_usr2_checkpoints_the_job_and_a_rerun_finishes_it_like_an_uninterrupted_run(tmp_path):
    proc = _job_in_generator_epoch_2(tmp_path, stderr=subprocess.STDOUT)
    proc.send_signal(signal.SIGUSR2)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output[-2000:]
    assert "preempted: checkpointed at step" in output
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert record["status"] == "preempted"
    assert (tmp_path / "job" / "checkpoints" / "generators.pt").exists()
    assert len(list((tmp_path / "artifacts").glob("surrogate-*.json"))) == 1  # a finished stage

    resumed = run_cli([*RESUMABLE, "hydra.run.dir=job"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    # An uninterrupted run with a store of its own: it computes every stage itself.
    reference = run_cli(
        [*RESUMABLE, "hydra.run.dir=reference", "paths.artifact_dir=reference-artifacts"],
        cwd=tmp_path,
    )
    assert reference.returncode == 0
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("job", "reference"))
    assert (a["status"], a["restarts"], b["restarts"]) == ("completed", 1, 0)
    assert a["stages"]["surrogate"]["status"] == "reused"  # from its own first attempt
    assert a["stages"]["surrogate"]["producer"] == str((tmp_path / "job").absolute())
    assert b["stages"]["surrogate"]["status"] == "computed"
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    assert a["generator"]["loss_history"] == b["generator"]["loss_history"]
    assert not (tmp_path / "job" / "checkpoints").exists(), "a completed job keeps no checkpoints"


@pytest.mark.slow
def test_a_completed_job_is_skipped_and_never_overwritten_by_a_changed_one(tmp_path: Path):
    first = run_cli([*SMOKE, "hydra.run.dir=job"], cwd=tmp_path)
    assert first.returncode == 0
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    again = run_cli([*SMOKE, "trainer.progress=none", "hydra.run.dir=job"], cwd=tmp_path)
    assert "already completed with this configuration: skipped" in again.stdout
    assert json.loads((tmp_path / "job" / "result.json").read_text()) == record
    saved = (tmp_path / "job" / "result.json").read_bytes()
    changed = run_cli([*SMOKE, "seed=1", "hydra.run.dir=job"], cwd=tmp_path)
    assert changed.returncode == 2
    assert changed.stderr.strip() == (
        "refusing to overwrite job: it holds a completed job of another configuration; "
        "choose another hydra.run.dir (or hydra.sweep.dir / UE_SWEEP_NAME)"
    )
    assert (tmp_path / "job" / "result.json").read_bytes() == saved
    elsewhere = run_cli([*SMOKE, "seed=1", "hydra.run.dir=job2"], cwd=tmp_path)
    assert elsewhere.returncode == 0
    new = json.loads((tmp_path / "job2" / "result.json").read_text())
    assert (new["seed"], new["restarts"]) == (1, 0)
    assert new["fingerprint"] != record["fingerprint"]


@pytest.mark.slow
def test_rerunning_a_multirun_skips_what_completed(tmp_path: Path):
    args = ["-m", "batch_size=32,64", *SMOKE]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 jobs: 2 completed" in first.stdout + first.stderr
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert sweep.name.startswith("smoke-")
    again = run_cli(args, cwd=tmp_path)
    assert "2 jobs: 2 skipped" in again.stdout + again.stderr
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == [sweep.name]


@pytest.mark.slow
def test_sigterm_outside_a_scheduler_records_interrupted(tmp_path: Path):
    proc = _job_in_generator_epoch_2(tmp_path, stderr=subprocess.PIPE)
    proc.terminate()
    _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert errors.strip().splitlines()[-1] == "interrupted: stopped by SIGTERM"
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert (record["status"], record["error"]["type"]) == ("interrupted", "Interrupted")


@pytest.mark.slow
def test_rerunning_a_job_that_failed_before_saving_state_is_no_restart(tmp_path: Path):
    # clusters.k=5000 is refused once the data is loaded, before any stage saves state.
    for _ in range(2):
        proc = run_cli(["clusters.k=5000", "hydra.run.dir=job"], cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        expected = "clusters.k=5000 is not accepted; expected at most the 1347 training images"
        assert expected in proc.stderr
        assert "surrogate fit" not in proc.stdout
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert (record["status"], record["restarts"]) == ("failed", 0)
