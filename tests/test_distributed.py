"""Real multi-process gloo runs: 2 ranks agree with 1, counts are exact, dead ranks fail fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests import dist_workers
from tests.conftest import REPO, ue_sweep_env
from ue_sweep.config import TrainerConfig
from ue_sweep.runtime.distributed import cpu_threads, free_port, runtime, spawn
from ue_sweep.runtime.env import DistEnv, DistributedSetupError, env_from_launcher


def test_threads_follow_the_config_then_slurm_cpus_per_task_then_the_cores():
    two_ranks = DistEnv(rank=0, world_size=2, local_world_size=2)
    slurm = {"SLURM_CPUS_PER_TASK": "3"}
    assert cpu_threads(TrainerConfig(threads=5), two_ranks, slurm) == 5
    assert cpu_threads(TrainerConfig(), two_ranks, slurm) == 3
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(TrainerConfig(), two_ranks, {}) == max(1, cores // 2)


def test_launcher_environment_is_read_from_torch_distributed_variables():
    assert env_from_launcher({}) is None
    env = env_from_launcher(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "1234",
            "TORCHELASTIC_RUN_ID": "x",
        }
    )
    assert env == DistEnv(
        rank=3,
        local_rank=1,
        world_size=8,
        local_world_size=4,
        master_addr="node7",
        master_port=1234,
        launcher="torchrun",
    )
    with pytest.raises(DistributedSetupError, match="malformed"):
        env_from_launcher({"RANK": "zero", "WORLD_SIZE": "2"})


def _run(fn, world: int, *args) -> dict:
    if world == 1:
        fn(DistEnv(), *args)
    else:
        spawn(fn, world, args)
    return torch.load(args[0])


@pytest.mark.slow
@pytest.mark.parametrize(("scope", "output"), [("all", "reference"), ("cluster", "tanh")])
def test_two_ranks_with_batch_b_train_the_same_generators_as_one_rank_with_2b(
    tmp_path, scope, output
):
    one = _run(dist_workers.train_bank, 1, str(tmp_path / "one.pt"), 16, scope, output)
    two = _run(dist_workers.train_bank, 2, str(tmp_path / "two.pt"), 8, scope, output)
    assert one["global_batch"] == two["global_batch"] == 16
    assert torch.equal(one["ids"], two["ids"])
    assert one["loss"][0] > 1e-3, "a surrogate with informative features"
    # float64 and 6 steps: rounding-order differences stay near 1e-16, far below tolerance.
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-9)
    moved = 0.0
    for name, param in one["bank"].items():
        torch.testing.assert_close(two["bank"][name], param, rtol=1e-7, atol=1e-9)
        moved = max(moved, (param - one["initial"][name]).abs().max().item())
    assert moved > 1e-3, "training changed the generators"


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["all", "cluster"])
def test_direct_patterns_train_the_same_on_two_ranks_with_b_as_on_one_with_2b(tmp_path, scope):
    args = (scope, "tanh", "direct")
    one = _run(dist_workers.train_bank, 1, str(tmp_path / "one.pt"), 16, *args)
    two = _run(dist_workers.train_bank, 2, str(tmp_path / "two.pt"), 8, *args)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-9)
    torch.testing.assert_close(two["bank"]["w"], one["bank"]["w"], rtol=1e-7, atol=1e-9)
    assert (one["bank"]["w"] - one["initial"]["w"]).abs().max() > 1e-3, "the patterns moved"
    # The union over ranks of the pixels that got a gradient is what one rank sees.
    assert two["gradient"] == one["gradient"]
    assert one["gradient"]["overall"] > 0.5, "eps * tanh passes gradients (bar clipped pixels)"


def test_accuracy_counts_are_exact_over_ranks_without_padding(tmp_path):
    one = _run(dist_workers.evaluate_and_gather, 1, str(tmp_path / "one.pt"))
    two = _run(dist_workers.evaluate_and_gather, 2, str(tmp_path / "two.pt"))
    assert sum(two["total"]) == 101
    assert two["correct"] == one["correct"]
    assert two["total"] == one["total"]
    assert two["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]


@pytest.mark.slow
def test_no_rank_leaves_the_process_group_before_every_rank_has_ended_its_work(tmp_path):
    """Rank 1 ends first; it closes its connections only once rank 0, still working, is done."""
    out = str(tmp_path / "times")
    spawn(dist_workers.leave_late, 2, (out,))
    zero, one = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert one["left"] >= zero["worked"]


def test_missing_rank_fails_the_rendezvous_after_the_timeout():
    env = DistEnv(rank=0, world_size=2, master_port=free_port())
    started = time.monotonic()
    with (
        pytest.raises(DistributedSetupError, match=r"rank 0 of 2 could not join .* within 3s"),
        runtime(env, TrainerConfig(accelerator="cpu", timeout_s=3)),
    ):
        pass
    assert time.monotonic() - started < 30


def test_rank_that_dies_mid_run_fails_its_peer_instead_of_hanging_it():
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = ue_sweep_env(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            UE_TEST_TIMEOUT="20",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.dist_workers", "collective-loop"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        code = procs[0].wait(timeout=60)
        assert code != 0
        assert time.monotonic() - started < 40
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
