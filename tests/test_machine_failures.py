"""Expected failures of the machine (a full disk, no permission, a killed rank): one clear line
that names the file, the free space and the size needed, or the rank, the signal and the command
that resumes; the traceback goes to the job's log file.

A disk cannot be filled here without privileges (no tmpfs mount), so the write failures are
raised by test doubles at the call that fails on a full disk (``os.fsync``, where delayed
allocation reports ENOSPC; ``torch.save``'s short write; ``mkstemp`` for permission), each said
so where it is made. Everything around them is the real code.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOKE, ue_sweep_env
from ue_sweep.cli.failures import one_line, resume_command
from ue_sweep.errors import MachineError, StorageError
from ue_sweep.runtime import tracking
from ue_sweep.runtime.tracking import ResultRecorder, atomic_torch_save, atomic_write_json

PAYLOAD = {"weights": torch.zeros(1000)}


def _size_of_save(payload) -> int:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return len(buffer.getvalue())


def _disk_full_at_fsync(monkeypatch) -> None:
    def fsync(fd: int) -> None:  # test double: the disk reports ENOSPC when data is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tracking.os, "fsync", fsync)


def test_a_full_disk_names_the_file_the_free_space_and_the_size_needed(tmp_path, monkeypatch):
    _disk_full_at_fsync(monkeypatch)
    target = tmp_path / "checkpoints" / "victim.pt"
    with pytest.raises(StorageError) as err:
        atomic_torch_save(target, PAYLOAD)
    e = err.value
    assert (e.path, e.needed) == (target, _size_of_save(PAYLOAD))
    assert e.free is not None and abs(e.free - shutil.disk_usage(tmp_path).free) < 2**24
    assert str(e).startswith(f"cannot write {target}: no space left on device (")
    assert "\n" not in str(e)
    assert not list(target.parent.iterdir()), "the temporary file is removed"


def test_torch_saves_short_write_is_reported_as_a_storage_error(tmp_path, monkeypatch):
    real_save, needed = torch.save, _size_of_save(PAYLOAD)

    def save(obj, f):  # test double: what torch.save raises when the disk fills mid-write
        if hasattr(f, "fileno"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 40960")
        real_save(obj, f)  # measuring the size it needed writes into a counting sink

    monkeypatch.setattr(torch, "save", save)
    target = tmp_path / "noise.pt"
    with pytest.raises(StorageError) as err:
        atomic_torch_save(target, PAYLOAD)
    assert err.value.needed == needed
    assert "the write stopped short ([enforce fail at inline_container.cc:672]" in str(err.value)


def test_a_write_without_permission_is_a_storage_error(tmp_path, monkeypatch):
    def mkstemp(**kwargs):  # test double: tests run as root, which no mode bit stops
        raise PermissionError(errno.EACCES, "Permission denied", kwargs["dir"])

    monkeypatch.setattr(tracking.tempfile, "mkstemp", mkstemp)
    with pytest.raises(StorageError) as err:
        atomic_write_json(tmp_path / "result.json", {"status": "running"})
    assert str(err.value).startswith(f"cannot write {tmp_path / 'result.json'}: permission denied")


def test_other_write_errors_are_left_alone(tmp_path, monkeypatch):
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tracking.os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        atomic_write_json(tmp_path / "x.json", {})
    assert not isinstance(err.value, StorageError)


def test_the_record_and_the_terminal_line_of_a_failed_write(tmp_path):
    error = StorageError(tmp_path / "job" / "noise.pt", "no space left on device", 2048, 40960)
    recorder = ResultRecorder.for_job(tmp_path / "job", {"seed": 0}, [])
    recorder.failed(error)
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert record["error"]["type"] == "StorageError"
    assert record["error"]["message"] == (
        f"cannot write {tmp_path / 'job' / 'noise.pt'}: no space left on device "
        "(2.0 KB free there, 41.0 KB needed)"
    )
    log = tmp_path / "job" / "ue_sweep.log"
    resume = "ue-sweep seed=0 hydra.run.dir=job"
    line = one_line(error, log, resume)
    assert isinstance(line, MachineError) and "\n" not in str(line)
    assert str(line).endswith(f"; traceback in {log}; resume with: {resume}")
    assert "StorageError" in log.read_text()


def test_the_resume_command_finds_the_same_job(tmp_path, monkeypatch):
    job = tmp_path / "outputs" / "2026-12-02" / "23-00-00"
    argv = ["experiment=smoke", 'batch_size="256"']
    assert resume_command(argv, job, multirun=False) == (
        f"ue-sweep experiment=smoke batch_size=256 hydra.run.dir={job}"
    )
    assert resume_command([*argv, "hydra.run.dir=a b"], job, multirun=False) == (
        "ue-sweep experiment=smoke batch_size=256 'hydra.run.dir=a b'"
    )
    monkeypatch.delenv("UE_SWEEP_NAME", raising=False)
    assert resume_command(["-m", "seed=0,1"], job, multirun=True) == "ue-sweep -m seed=0,1"
    monkeypatch.setenv("UE_SWEEP_NAME", "my sweep")
    assert resume_command(["-m", "seed=0,1"], job, multirun=True) == (
        "UE_SWEEP_NAME='my sweep' ue-sweep -m seed=0,1"
    )


# The real command with a full disk where the surrogate's weights are saved (its checkpoint): the
# test double (os.fsync raising ENOSPC for that file) is installed before ue-sweep's main runs.
FULL_DISK_AT_SURROGATE = """
import errno, os, sys
from ue_sweep.runtime import tracking
real = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").rpartition("/")[2].startswith(".surrogate.pt."):
        raise OSError(errno.ENOSPC, "No space left on device")
    real(fd)
tracking.os.fsync = fsync
from ue_sweep.cli.main import main
sys.argv[0] = "ue-sweep"
main()
"""


@pytest.mark.slow
def test_a_job_on_a_full_disk_ends_in_one_line_and_records_it(tmp_path: Path):
    args = [*SMOKE, "hydra.run.dir=job"]
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_AT_SURROGATE, *args],
        cwd=tmp_path,
        env=ue_sweep_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    job = tmp_path / "job"
    # the surrogate's first checkpoint, written during its fit
    checkpoint = job.absolute() / "checkpoints" / "surrogate.pt"
    assert line.startswith(f"cannot write {checkpoint}: no space left on device (")
    assert "free there," in line and "needed); traceback in" in line
    assert line.endswith(f"resume with: ue-sweep {' '.join(args)}")
    record = json.loads((job / "result.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "StorageError"
    assert record["error"]["message"] == line.split("; traceback in")[0]
    assert "Traceback" in (job / "ue_sweep.log").read_text()
