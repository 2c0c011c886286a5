"""The launcher presets of today's machines (jsm, frontier, perlmutter; summit as the historical
shape): each composes, keeps the HPC study's world size, refuses to submit without its account,
prints its plan with check_only, and writes the job script its machine's documents ask for.

The SLURM presets also run a smoke sweep on a real SLURM controller when one answers (`.ci/run`
starts one), with the GPU flags a CPU node cannot grant turned off; those flags are checked in
the generated sbatch script instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from hydra_plugins.ue_sweep_launchers.config import FrontierConf, JsmConf, PerlmutterConf
from hydra_plugins.ue_sweep_launchers.launchers import SlurmLauncher, task_miopen_cache
from submitit_lsf.script import make_bsub_script
from tests.conftest import SMOKE, read_results, run_cli
from ue_sweep.runtime.env import env_from_launcher

# preset -> (its account setting, the nodes of experiment=hpc_grid, tasks per node)
PRESETS = {
    "frontier": ("account", 6, 8),
    "perlmutter": ("account", 12, 4),
    "jsm": ("project", 12, 4),
    "summit": ("project", 8, 6),
    "slurm_gpu": (None, 12, 4),
}


def _account(preset: str) -> list[str]:
    key = PRESETS[preset][0]
    return [f"hydra.launcher.{key}=ABC123"] if key else []


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_hpc_grid_keeps_its_world_size_of_48_on_every_preset(preset):
    import ue_sweep.cli.main  # noqa: F401 (registers the launchers, their configs and resolvers)

    overrides = ["experiment=hpc_grid", f"hydra/launcher={preset}", *_account(preset)]
    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node) == PRESETS[preset][1:]
    assert launcher.nodes * launcher.tasks_per_node == 48


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["frontier", "perlmutter", "jsm"])
def test_a_preset_refuses_to_submit_without_its_account(tmp_path, preset):
    proc = run_cli(["-m", f"hydra/launcher={preset}", *SMOKE, "hydra.sweep.dir=s"], cwd=tmp_path)
    assert proc.returncode != 0
    assert f"Missing mandatory value: hydra.launcher.{PRESETS[preset][0]}" in proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "asks"),
    [
        (
            "frontier",
            "nodes=6 tasks_per_node=8 gpus_per_task=1 cpus_per_task=7 timeout_min=120 "
            "account=ABC123 srun_args=[--gpus-per-task=1,--gpu-bind=closest] "
            "additional_parameters={gpu-bind:closest} setup=[export NCCL_SOCKET_IFNAME=hsn0] "
            "miopen_cache_root=/tmp/ue-sweep-miopen-$SLURM_JOB_ID",
        ),
        (
            "perlmutter",
            "nodes=12 tasks_per_node=4 gpus_per_node=4 cpus_per_task=32 timeout_min=120 "
            "qos=regular account=ABC123 constraint=gpu",
        ),
        (
            "jsm",
            "nodes=12 tasks_per_node=4 gpus_per_node=4 cpus_per_task=10 timeout_min=120 "
            "project=ABC123 allocation=nnodes task_launcher=jsrun resource_sets=node",
        ),
    ],
)
def test_check_only_prints_the_plan_of_each_preset(tmp_path, preset, asks):
    args = ["-m", f"hydra/launcher={preset}", *_account(preset), *SMOKE, "seed=0,1"]
    proc = run_cli([*args, "hydra.launcher.check_only=true", "hydra.sweep.dir=s"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    kind = "lsf" if preset == "jsm" else "slurm"
    assert f"plan for sweep s ({kind}): 2 jobs: 2 to submit" in output
    assert f"each job asks for: {asks}" in output
    assert "check only (hydra.launcher.check_only=true): nothing was submitted" in output


def _sbatch_script(conf: type, tmp_path: Path, **overrides) -> list[str]:
    """The sbatch script the preset's launcher writes (submitit's own text)."""
    params = OmegaConf.to_container(OmegaConf.structured(conf(account="ABC123")))
    params.pop("_target_")
    params |= {"submitit_folder": str(tmp_path / "%j"), "name": "job", **overrides}
    executor = SlurmLauncher(**params)._executor()
    return executor._executor._make_submission_file_text("python -m task", "uid").splitlines()


def test_the_frontier_script_binds_one_gcd_per_task_and_charges_the_account(tmp_path):
    lines = _sbatch_script(FrontierConf, tmp_path)
    for directive in (
        "#SBATCH --nodes=6",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --gpu-bind=closest",
        "#SBATCH --cpus-per-task=7",
        "#SBATCH --account=ABC123",
        "export NCCL_SOCKET_IFNAME=hsn0",
    ):
        assert directive in lines
    (srun,) = [line for line in lines if line.startswith("srun")]
    assert "--gpus-per-task=1 --gpu-bind=closest" in srun
    assert not any("gpus-per-node" in line for line in lines), "one GCD per task, not per node"


def test_the_perlmutter_script_asks_for_gpu_nodes_a_qos_and_the_account(tmp_path):
    lines = _sbatch_script(PerlmutterConf, tmp_path)
    for directive in (
        "#SBATCH --nodes=12",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --constraint=gpu",
        "#SBATCH --qos=regular",
        "#SBATCH --account=ABC123",
    ):
        assert directive in lines


def test_the_jsm_script_runs_one_resource_set_per_node_charged_to_the_project(tmp_path):
    conf = JsmConf(project="ABC123")
    lines = make_bsub_script(
        "python -m submitit_lsf.task F",
        tmp_path,
        walltime_min=conf.timeout_min,
        nodes=conf.nodes,
        tasks_per_node=conf.tasks_per_node,
        gpus_per_node=conf.gpus_per_node,
        cpus_per_task=conf.cpus_per_task,
        project=conf.project,
        allocation=conf.allocation,
        task_launcher=conf.task_launcher,
        resource_sets=conf.resource_sets,
        smpiargs=conf.smpiargs,
    ).splitlines()
    assert "#BSUB -nnodes 12" in lines and "#BSUB -P ABC123" in lines
    assert (
        'jsrun -n 12 -a 4 -c 40 -g 4 -r 1 -b packed:10 --smpiargs="-disable_gpu_hooks" '
        "python -m submitit_lsf.task F &"
    ) in lines


def test_each_task_gets_its_own_node_local_miopen_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", "9")
    path = task_miopen_cache(str(tmp_path / "m-$SLURM_JOB_ID"), os.environ)
    assert path == tmp_path / "m-77" / "rank9" and path.is_dir()
    assert os.environ["MIOPEN_USER_DB_PATH"] == os.environ["MIOPEN_CUSTOM_CACHE_DIR"] == str(path)


def test_the_master_address_of_a_frontier_job_is_slurms_first_node(monkeypatch):
    for key, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "frontier[03218-03223]",
        "SLURM_JOB_NUM_NODES": "6",
        "SLURM_NTASKS": "48",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
    }.items():
        monkeypatch.setenv(key, value)
    env = env_from_launcher()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (9, 1, 48, 8)
    assert env.master_addr == "frontier03218"


def _controller_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


# What a single CPU node cannot grant; the GPU flags are checked in the scripts above.
CPU_NODE = [
    "hydra.launcher.nodes=1",
    "hydra.launcher.tasks_per_node=2",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
]
CPU_ONLY = {
    "frontier": [
        "hydra.launcher.gpus_per_task=null",
        "hydra.launcher.srun_args=[]",
        "hydra.launcher.additional_parameters={}",
        "hydra.launcher.setup=[]",
    ],
    "perlmutter": [
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.constraint=null",
        "hydra.launcher.qos=normal",
    ],
}


@pytest.mark.slow
@pytest.mark.skipif(not _controller_answers(), reason="no SLURM controller answers")
@pytest.mark.parametrize("preset", ["frontier", "perlmutter"])
def test_a_smoke_sweep_of_each_slurm_preset_runs_on_real_slurm(tmp_path, preset):
    extra = [f"hydra.launcher.miopen_cache_root={tmp_path}/miopen-$SLURM_JOB_ID"]
    args = ["-m", f"hydra/launcher={preset}", *_account(preset), *CPU_NODE, *CPU_ONLY[preset]]
    args += extra if preset == "frontier" else []
    proc = run_cli([*args, *SMOKE, "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = read_results(tmp_path / "sweep")
    assert (record["status"], record["world_size"], record["launcher"]) == (
        "completed",
        2,
        "slurm",
    )
    if preset == "frontier":
        (cache,) = tmp_path.glob("miopen-*")
        assert sorted(p.name for p in cache.iterdir()) == ["rank0", "rank1"]
