"""The artifact store: keys, atomic entries, corrupt entries, concurrent jobs, 2-rank reuse."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from ue_sweep.config import TrainerConfig
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.store.artifacts import ArtifactStore, StageKey, Stages

KEY = StageKey("victim", {"data": "abc", "victim": {"epochs": 2}, "world_size": 1})


def test_a_key_names_exactly_its_inputs():
    same = StageKey("victim", {"world_size": 1, "victim": {"epochs": 2}, "data": "abc"})
    assert same.name == KEY.name  # dict order does not matter
    assert StageKey("victim", {**KEY.inputs, "world_size": 2}).digest != KEY.digest
    assert StageKey("clusters", KEY.inputs).digest != KEY.digest
    assert KEY.name.startswith("victim-") and len(KEY.digest) == 20


def test_an_entry_round_trips_and_names_its_inputs_and_producer(tmp_path):
    store = ArtifactStore(tmp_path, producer="jobs/0")
    store.save(KEY, {"state": torch.arange(5.0), "n": 3})
    manifest = json.loads((tmp_path / f"{KEY.name}.json").read_text())
    assert manifest["inputs"] == KEY.inputs and manifest["producer"] == "jobs/0"
    found = store.load(KEY)
    assert found is not None
    manifest_read, loaded = found
    assert manifest_read == manifest and loaded["n"] == 3
    assert torch.equal(loaded["state"], torch.arange(5.0))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_corrupt_entry_is_set_aside_with_a_warning_and_recomputed(tmp_path, rt, caplog):
    store = ArtifactStore(tmp_path)
    store.save(KEY, {"x": torch.ones(100)})
    path = store.path(KEY)
    path.write_bytes(path.read_bytes()[:-40])  # truncated by a full disk, say
    stages = Stages(rt, store)
    with caplog.at_level(logging.WARNING, logger="ue_sweep.store.artifacts"):
        outcome = stages.run("victim-clean", KEY, lambda: {"x": torch.zeros(3)})
    assert "damaged" in caplog.text and KEY.name in caplog.text
    assert torch.equal(outcome["x"], torch.zeros(3))
    assert stages.provenance["victim-clean"]["status"] == "computed"
    assert list(tmp_path.glob(f"{KEY.name}.pt.corrupt-*"))
    again = Stages(rt, store).run("victim-clean", KEY, _never)
    assert torch.equal(again["x"], torch.zeros(3))


def test_an_entry_whose_manifest_is_missing_is_not_an_entry(tmp_path, rt):
    store = ArtifactStore(tmp_path)
    store.save(KEY, {"x": 1})
    (tmp_path / f"{KEY.name}.json").unlink()  # killed between the two writes
    assert store.load(KEY) is None
    assert Stages(rt, store).run("s", KEY, lambda: {"x": 2})["x"] == 2


def _never() -> dict:
    raise AssertionError("a stored stage was computed again")


def test_a_second_job_reuses_and_records_where_from(tmp_path, rt):
    store = ArtifactStore(tmp_path, producer="job-a")
    first = Stages(rt, store)
    first.run("generators", KEY, lambda: {"bank": torch.randn(4, generator=torch.Generator())})
    second = Stages(rt, ArtifactStore(tmp_path, producer="job-b"))
    reused = second.run("generators", KEY, _never)
    assert first.provenance["generators"]["status"] == "computed"
    record = second.provenance["generators"]
    assert record["status"] == "reused" and record["producer"] == "job-a"
    assert record["artifact"] == str(tmp_path / f"{KEY.name}.pt")
    assert reused["bank"].shape == (4,)


def test_no_store_computes_every_time(rt):
    stages = Stages(rt, None)
    assert stages.run("s", KEY, lambda: {"x": 1}) == {"x": 1}
    assert stages.provenance["s"]["status"] == "computed"


def _racing_job(root: str, name: str, out: str, hold_s: float) -> None:
    """One job's rank 0: computes KEY slowly (counting computations in a file) or reuses it."""
    with runtime(DistEnv(), TrainerConfig(accelerator="cpu")) as rt:

        def compute() -> dict:
            with open(Path(root) / "computations", "a") as f:
                f.write(f"{name}\n")
            time.sleep(hold_s)
            return {"value": torch.tensor([float(len(name))]), "by": name}

        stages = Stages(rt, ArtifactStore(Path(root) / "store", producer=name))
        outcome = stages.run("victim-clean", KEY, compute)
        Path(out).write_text(json.dumps([outcome["by"], stages.provenance["victim-clean"]]))


@pytest.mark.slow
def test_two_jobs_racing_for_one_artifact_compute_it_once_and_agree(tmp_path):
    ctx = mp.get_context("spawn")
    jobs = [
        ctx.Process(target=_racing_job, args=(str(tmp_path), n, str(tmp_path / n), 3.0))
        for n in ("first", "second")
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
        assert job.exitcode == 0
    computations = (tmp_path / "computations").read_text().split()
    assert len(computations) == 1  # one job computed while the other waited on the lock
    results = {n: json.loads((tmp_path / n).read_text()) for n in ("first", "second")}
    assert results["first"][0] == results["second"][0] == computations[0]
    statuses = sorted(r[1]["status"] for r in results.values())
    assert statuses == ["computed", "reused"]


def test_a_killed_job_never_blocks_the_artifact(tmp_path):
    """The lock dies with the job that held it: the next job computes the stage itself."""
    ctx = mp.get_context("spawn")
    holder = ctx.Process(target=_racing_job, args=(str(tmp_path), "killed", "/dev/null", 60.0))
    holder.start()
    lock = tmp_path / "store" / "locks" / f"{KEY.name}.lock"
    deadline = time.monotonic() + 60
    while not (tmp_path / "computations").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lock.exists()
    holder.kill()
    holder.join()
    _racing_job(str(tmp_path), "next", str(tmp_path / "next"), 0.0)
    by, record = json.loads((tmp_path / "next").read_text())
    assert by == "next" and record["status"] == "computed"
