"""W&B logging: real offline runs of the real command read back, failures, ranks, `logger=none`."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import SMOKE, ue_sweep_env
from tests.wandb_records import offline_runs
from ue_sweep.cli.validation import to_root_config
from ue_sweep.config import LoggerConfig
from ue_sweep.errors import ConfigError
from ue_sweep.runtime.loggers import (
    JobIdentity,
    WandbLogger,
    default_group,
    resolve_mode,
    run_id,
    run_name,
    sweep_key,
)


def _wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment, isolated from the machine's W&B: no key, settings, files."""
    env = {k: v for k, v in ue_sweep_env().items() if not k.startswith("WANDB_")}
    return env | {
        "HOME": str(tmp_path / "home"),  # no ~/.netrc
        "WANDB_DIR": str(tmp_path / "wandb-files"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        **extra,
    }


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _job_files(job: Path) -> set[str]:
    return {p.name for p in job.iterdir()}


JOB_FILES = {
    ".hydra",
    "result.json",
    "noise.pt",
    "controls.pt",
    "progress.json",
    "noise.png",
    "samples.png",
    "protected_train.pt",
    "surrogate.pt",
    "ue_sweep.log",
}


# --------------------------------------------------------------------------------------------
# Naming and mode rules
# --------------------------------------------------------------------------------------------


def test_the_logger_group_selects_the_backend_and_validates_its_keys(compose_cfg):
    assert to_root_config(compose_cfg()).logger.backend == "none"
    cfg = to_root_config(compose_cfg("logger=wandb")).logger
    assert (cfg.backend, cfg.mode, cfg.project, cfg.init_timeout_s) == (
        "wandb",
        "auto",
        "ue-sweep",
        30,
    )
    with pytest.raises(ConfigError, match=re.escape("logger.mode='loud' is not accepted")):
        to_root_config(compose_cfg("logger=wandb", "logger.mode=loud"))


def test_run_ids_are_stable_per_job_and_stage_and_distinct_across_sweeps(tmp_path):
    a, b = tmp_path / "multirun" / "2026-11-23" / "10-00-00", tmp_path / "other"
    assert run_id(a, 3, "uc") == run_id(str(a), 3, "uc") == f"{sweep_key(a)}-3-uc"
    ids = {run_id(s, n, st) for s in (a, b) for n in (0, 1) for st in ("uc", "victim")}
    assert len(ids) == 8
    assert run_id(a, None, "report") == f"{sweep_key(a)}-report"
    assert default_group(a) == "2026-11-23_10-00-00"
    assert default_group("/home/me/multirun/smoke-1a2b3c4d") == "smoke-1a2b3c4d"


def test_run_names_come_from_the_overrides_that_change_results():
    overrides = ["dataset=pets", "batch_size=256", "logger=wandb", "logger.project=x"]
    assert run_name([*overrides, "trainer.progress=log", "hydra.run.dir=a"]) == (
        "dataset=pets,batch_size=256"
    )
    assert run_name(["logger=wandb"]) == "defaults"


@pytest.mark.parametrize(
    ("requested", "env", "expected"),
    [
        ("auto", {}, "offline"),
        ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "offline"),
        ("auto", {"WANDB_API_KEY": "k" * 40}, "online"),
        ("offline", {"WANDB_API_KEY": "k" * 40}, "offline"),
        ("online", {}, "offline"),  # never online without a key: wandb would prompt for one
        ("disabled", {}, "disabled"),
    ],
)
def test_mode_is_offline_unless_a_key_is_configured(
    monkeypatch, tmp_path, requested, env, expected
):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert resolve_mode(requested)[0] == expected


def test_a_wandb_login_netrc_entry_counts_as_a_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine wandb.example.org\n  login user\n  password " + "p" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_mode("auto")[0] == "online"


class _RaisingRun:
    """Stand-in for a wandb Run whose calls raise: a real run cannot be made to fail on demand."""

    id = "raising"
    dir = "/nonexistent/files"

    def __init__(self) -> None:
        self.finished_with: list[int] = []

    def define_metric(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("wandb broke")

    log = define_metric

    def finish(self, exit_code: int = 0) -> None:
        self.finished_with.append(exit_code)


def test_an_exception_from_wandb_gives_one_warning_and_turns_wandb_off(caplog, tmp_path):
    job = JobIdentity(str(tmp_path), 0, (), {}, str(tmp_path))
    tracker = WandbLogger(LoggerConfig(backend="wandb"), job)
    tracker._run = run = _RaisingRun()
    with caplog.at_level("WARNING", logger="ue_sweep"):
        tracker.log_epoch("generators", 0, {"kl": 1.0})
        tracker.log_epoch("generators", 1, {"kl": 0.5})
        tracker.set_summary({"a": 1})
        tracker.start_stage("victim")  # disabled: no new run, no wandb.init
        tracker.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "RuntimeError: wandb broke" in warnings[0].getMessage()
    assert run.finished_with == [1]
    assert tracker.describe()["warning"] == "RuntimeError: wandb broke"
    assert tracker.describe()["runs"] == {}


# --------------------------------------------------------------------------------------------
# Real jobs
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_offline_runs_hold_config_history_summary_and_media_and_a_requeue_reuses_them(tmp_path):
    env = _wandb_env(tmp_path, WANDB_MODE="offline")
    args = [*SMOKE, "logger=wandb", "generator.epochs=2", "hydra.run.dir=job"]
    proc = _run(args, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "job"
    record = json.loads((job / "result.json").read_text())
    assert record["status"] == "completed"

    runs = {r.run.job_type: r for r in offline_runs(tmp_path / "wandb-files")}
    assert sorted(runs) == ["uc", "victim"]
    uc, victim = runs["uc"], runs["victim"]
    key = sweep_key(job)
    assert (uc.run.run_id, victim.run.run_id) == (f"{key}-0-uc", f"{key}-0-victim")
    assert record["wandb"]["runs"]["uc"]["id"] == uc.run.run_id
    assert record["wandb"]["mode"] == "offline"
    for run in (uc, victim):
        assert run.run.project == "ue-sweep"
        assert run.run.run_group == record["wandb"]["group"] == default_group(job)
        assert run.run.display_name == "experiment=smoke,generator.epochs=2"
        assert run.run.resume  # resume="allow": `wandb sync` continues the run of a requeue
        assert run.exit_code == 0
        assert {k: v for k, v in run.config.items() if k != "_wandb"} == record["config"]

    # uc: surrogate fit and generator epochs on their own x-axes, the pictures, uc summary.
    kl = [h["generators/kl"] for h in uc.history if "generators/kl" in h]
    assert kl == pytest.approx(record["generator"]["loss_history"])
    assert [h["generators/epoch"] for h in uc.history if "generators/kl" in h] == [1, 2]
    for h in (h for h in uc.history if "generators/kl" in h):
        assert {"generators/hit", "generators/saturated", "generators/surrogate_acc"} <= set(h)
    assert any("surrogate_fit/loss" in h for h in uc.history)
    (media,) = [h for h in uc.history if "media/samples._type" in h]
    assert media["media/samples._type"] == media["media/noise._type"] == "image-file"
    assert (uc.path / "files" / media["media/samples.path"]).is_file()
    throughput = record["throughput"]["generator_images_per_s"]
    assert uc.summary["throughput"]["generator_images_per_s"] == pytest.approx(throughput)
    assert uc.summary["clusters"]["k"] == 10 and "metrics" not in uc.summary

    # victim: per-epoch history of each victim, the job's final metrics as the summary.
    accuracy = record["metrics"]["accuracy"]
    for condition in ("clean", "protected", "uniform", "sign", "untrained"):
        rows = [h for h in victim.history if f"victim_{condition}/test_acc" in h]
        assert rows[-1][f"victim_{condition}/test_acc"] == pytest.approx(accuracy[condition])
        assert rows[-1][f"victim_{condition}/steps_per_s"] > 0
    assert victim.summary["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert victim.summary["batch"]["global"] == record["batch"]["global"]

    for name in ("noise.png", "samples.png"):
        with Image.open(job / name) as image:
            assert image.format == "PNG" and image.width >= 10 * 64
    assert "k-means done in" in (job / "ue_sweep.log").read_text()

    # A requeued job (same sweep directory and job number) logs to the same two runs. A completed
    # job would be skipped: mark it as a preempted attempt leaves it.
    (job / "result.json").write_text(json.dumps({**record, "status": "preempted"}))
    again = _run(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = offline_runs(tmp_path / "wandb-files")
    assert len(runs) == 4
    assert {r.run.run_id for r in runs} == {uc.run.run_id, victim.run.run_id}
    sync = subprocess.run(
        [
            str(Path(sys.executable).parent / "wandb"),
            "sync",
            "--dry-run",
            str(tmp_path / "wandb-files" / "wandb"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert sync.returncode == 0 and "Would sync 4 run(s)" in sync.stdout + sync.stderr


def _run_on_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal, as a user at a shell."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_logger_none_writes_no_wandb_files_and_a_terminal_gets_a_bar_per_stage(tmp_path):
    env = _wandb_env(tmp_path, WANDB_MODE="offline")
    rc, output = _run_on_terminal(["experiment=smoke", "hydra.run.dir=job"], tmp_path, env)
    assert rc == 0, output[-3000:]
    job = tmp_path / "job"
    assert _job_files(job) == JOB_FILES
    assert not (tmp_path / "wandb-files").exists()
    assert not list(tmp_path.rglob("*.wandb"))
    assert "wandb" not in json.loads((job / "result.json").read_text())
    # tqdm bars (steps, rate) for every stage instead of per-epoch log lines.
    for stage in ("surrogate fit", "k-means", "generators", "victim (clean)", "victim (protected)"):
        assert re.search(re.escape(stage) + r": 100%\|.*\| (\d+)/\1 ", output), stage
    assert "generators epoch 1/1 kl" not in (job / "ue_sweep.log").read_text()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


FAKE_KEY = "f4k3" * 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "env"),
    [
        ("unreachable", {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": "http://127.0.0.1:{port}"}),
        ("bad key", {"WANDB_API_KEY": "not-a-key"}),
    ],
)
def test_failing_wandb_leaves_the_job_completed_with_one_warning(tmp_path, case, env):
    env = _wandb_env(tmp_path, WANDB_MODE="online", **env)
    if case == "unreachable":
        env["WANDB_BASE_URL"] = env["WANDB_BASE_URL"].format(port=_closed_port())
    timeout = 3
    proc = _run(
        [*SMOKE, "logger=wandb", f"logger.init_timeout_s={timeout}", "hydra.run.dir=job"],
        tmp_path,
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "job"
    record = json.loads((job / "result.json").read_text())
    assert record["status"] == "completed"
    assert record["wandb"]["runs"] == {} and record["wandb"]["warning"]

    lines = (job / "ue_sweep.log").read_text().splitlines()
    (started,) = [ln for ln in lines if "W&B online" in ln]
    warnings = [ln for ln in lines if "[WARNING]" in ln and "W&B" in ln]
    assert len(warnings) == 1, warnings
    # The stall is bounded by logger.init_timeout_s, plus wandb's own account lookup (2 x 5 s).
    assert (_log_time(warnings[0]) - _log_time(started)).total_seconds() < timeout + 20
    # The key is never written anywhere.
    key = env["WANDB_API_KEY"]
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.slow
def test_rank_one_of_two_logs_nothing_to_wandb_and_writes_nothing(tmp_path):
    env = _wandb_env(tmp_path, WANDB_MODE="offline")
    proc = _run([*SMOKE, "logger=wandb", "trainer.devices=2", "hydra.run.dir=job"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "job"
    record = json.loads((job / "result.json").read_text())
    assert record["world_size"] == 2
    runs = offline_runs(tmp_path / "wandb-files")
    assert sorted(r.run.job_type for r in runs) == ["uc", "victim"]
    (uc,) = [r for r in runs if r.run.job_type == "uc"]
    assert uc.summary["world_size"] == 2
    assert len([h for h in uc.history if "generators/kl" in h]) == 1  # one epoch, logged once
    assert _job_files(job) == JOB_FILES
    assert proc.stdout.count("generators epoch 1/1") == 1
