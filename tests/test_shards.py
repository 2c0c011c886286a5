"""The protected set in shards (uc/shards.py): written by every rank, read memory-mapped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests import scale_workers
from tests.conftest import SMOKE, run_cli
from ue_sweep.runtime.distributed import spawn
from ue_sweep.runtime.env import DistEnv
from ue_sweep.uc.shards import MANIFEST, ShardFormatError, read_shards


def _ranks(world: int, *args: object) -> None:
    """``scale_workers.write_protected`` on ``world`` real gloo ranks (this process for one)."""
    if world == 1:
        scale_workers.write_protected(DistEnv(), *args)
    else:
        spawn(scale_workers.write_protected, world, args)


def test_one_rank_writes_a_shard_that_numpy_alone_reads_back(tmp_path):
    images, labels = scale_workers.seeded_images(11)
    _ranks(1, str(tmp_path / "set"), 11)
    manifest = json.loads((tmp_path / "set" / MANIFEST).read_text())
    assert manifest["count"] == 11 and manifest["shape"] == [3, 5, 4]
    # The documented format (docs/SHARDS.md), with numpy only.
    (shard,) = manifest["shards"]
    mapped = np.load(tmp_path / "set" / shard["images"], mmap_mode="r")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.uint8
    assert np.array_equal(mapped, images.numpy())
    read = read_shards(tmp_path / "set")
    assert torch.equal(read.all_images(), images)
    assert torch.equal(read.all_labels(), labels)
    assert not list((tmp_path / "set").glob(".*tmp*")), "no temporary files left"


def test_two_ranks_write_two_shards_that_read_back_as_the_set(tmp_path):
    out = tmp_path / "set"
    _ranks(2, str(out), 11)
    assert sorted(p.name for p in out.glob("*.images.npy")) == [
        "shard-00000-of-00002.images.npy",
        "shard-00001-of-00002.images.npy",
    ]
    read = read_shards(out / MANIFEST)
    assert [len(a) for a in read.images] == [5, 6]
    images, labels = scale_workers.seeded_images(11)
    assert torch.equal(read.all_images(), images)
    assert torch.equal(read.all_labels(), labels)
    # Written again by one rank: the two-rank shards go, the manifest names the new one.
    _ranks(1, str(out), 11)
    assert [p.name for p in out.glob("*.images.npy")] == ["shard-00000-of-00001.images.npy"]


def test_a_missing_or_inconsistent_shard_is_refused(tmp_path):
    _ranks(1, str(tmp_path / "set"), 6)
    labels = tmp_path / "set" / "shard-00000-of-00001.labels.npy"
    np.save(labels, np.zeros(5, dtype=np.int64))
    with pytest.raises(ShardFormatError, match="does not match"):
        read_shards(tmp_path / "set")
    (tmp_path / "set" / MANIFEST).unlink()
    with pytest.raises(ShardFormatError, match=r"no readable manifest\.json"):
        read_shards(tmp_path / "set")


@pytest.mark.slow
def test_a_two_rank_job_publishes_shards_that_uc_source_evaluates(tmp_path):
    sharded = ["protected_shards_above=0", "clusters.backend=sharded", "evals=[]"]
    first = run_cli(
        [*SMOKE, "hydra.run.dir=two", "trainer.devices=2", "trainer.threads=1", *sharded],
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["artifacts"]["protected_train"] == "protected_train"
    assert len(list((tmp_path / "two" / "protected_train").glob("*.images.npy"))) == 2
    second = run_cli(
        [
            *SMOKE,
            "hydra.run.dir=from-shards",
            "trainer.threads=1",
            f"uc.source={tmp_path / 'two' / 'protected_train'}",
            "evals.victims.controls=[sign]",
        ],
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    evaluated = json.loads((tmp_path / "from-shards" / "result.json").read_text())
    assert evaluated["uc_source"]["kind"] == "protected set"
    assert evaluated["protection"]["k"] == result["dataset"]["train_size"]
