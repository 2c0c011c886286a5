"""Job records on disk: atomic writes, the result file, and environment versions.

Only rank 0 (or the process that spawned the ranks) writes here.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import platform
import shutil
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_sweep.errors import StorageError

RESULT_FILE = "result.json"


# Write failures the machine causes, not the code: errno -> what to tell the user.
_STORAGE_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Write ``path`` through a temporary file, so that readers see the old or the new file.

    A failure for lack of space or permission raises :class:`StorageError`, which names the
    file, the free space and the size the write needed.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        storage = _storage_error(err, path, write, mode)
        if storage is None:
            raise
        raise storage from err


def _storage_error(
    err: BaseException, path: Path, write: Callable[[Any], None], mode: str
) -> StorageError | None:
    """The clear error for a write the disk refused, or None for any other failure."""
    if isinstance(err, OSError) and err.errno in _STORAGE_PROBLEMS:
        problem = _STORAGE_PROBLEMS[err.errno]
    elif isinstance(err, RuntimeError) and "inline_container.cc" in str(err):
        # torch.save's zip writer reports a short write as "[enforce fail at
        # inline_container.cc:...] unexpected pos N vs M", whatever the cause.
        problem = f"the write stopped short ({str(err).splitlines()[0]})"
    else:
        return None
    free = _free_bytes(path)
    needed = _bytes_written(write, mode)
    if free is not None and needed is not None and free < needed:
        problem = _STORAGE_PROBLEMS[errno.ENOSPC]
    return StorageError(path, problem, free, needed)


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return None if existing is None else shutil.disk_usage(existing).free
    except OSError:
        return None


class _CountingSink:
    """A write-only file that keeps nothing and counts the bytes written to it."""

    def __init__(self, text: bool) -> None:
        self.text, self.count = text, 0

    def write(self, data: Any) -> int:
        self.count += len(data.encode()) if self.text else len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _bytes_written(write: Callable[[Any], None], mode: str) -> int | None:
    """The size ``write`` produces, measured by writing again into a counting sink."""
    sink = _CountingSink(text="b" not in mode)
    try:
        write(sink)
    except Exception:
        return None
    return sink.count


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda f: json.dump(payload, f, indent=2, allow_nan=True), "w")


def atomic_torch_save(path: Path, payload: Any) -> None:
    import torch  # here, not at import: the command line records results without torch

    atomic_write(path, lambda f: torch.save(payload, f), "wb")


def versions() -> dict[str, str | None]:
    from importlib import metadata  # here: a refused command line answers without it

    def dist_version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    packages = (
        "ue-sweep",
        "torch",
        "torchvision",
        "hydra-core",
        "omegaconf",
        "scikit-learn",
        "numpy",
    )
    found = {name: dist_version(name) for name in packages}
    found["python"] = platform.python_version()
    import torch

    found["cuda"] = torch.version.cuda
    return found


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def process_gone(record: dict[str, Any]) -> str | None:
    """Why a ``running`` record's job cannot still be running, or None if it may be.

    Only a process on this host can be looked up; elsewhere a job may well be alive.
    """
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} on {host} is gone without recording an end (killed)"
    except PermissionError:
        return None
    return None


@dataclass
class ResultRecorder:
    """Writes ``result.json`` in a job directory: running, then completed, failed or preempted."""

    job_dir: Path
    base: dict[str, Any]

    @classmethod
    def for_job(cls, job_dir: Path, config: dict[str, Any], overrides: list[str]) -> ResultRecorder:
        base = {
            "config": config,
            "overrides": overrides,
            "seed": config.get("seed"),
            "versions": versions(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_dir": str(job_dir),
            "started_at": now(),
        }
        return cls(job_dir=job_dir, base=base)

    @property
    def path(self) -> Path:
        return self.job_dir / RESULT_FILE

    def _write(self, status: str, **fields: Any) -> dict[str, Any]:
        record = {"status": status, **self.base, **fields, "updated_at": now()}
        atomic_write_json(self.path, record)
        return record

    def running(self) -> dict[str, Any]:
        return self._write("running")

    def completed(self, outcome: dict[str, Any]) -> dict[str, Any]:
        return self._write("completed", **outcome)

    def preempted(self, stop: BaseException) -> dict[str, Any]:
        return self._write("preempted", preemption={"message": str(stop)})

    def interrupted(self, stop: BaseException) -> dict[str, Any]:
        return self._write("interrupted", error={"type": "Interrupted", "message": str(stop)})

    def failed(self, error: BaseException) -> dict[str, Any]:
        return self._write(
            "failed",
            error={
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(error)),
            },
        )

    def read(self) -> dict[str, Any] | None:
        """The job's record; None if there is none or it is no record (truncated, edited)."""
        try:
            record = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None
