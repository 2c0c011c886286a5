"""Job records on disk: atomic writes, the result file, and environment versions.

Only rank 0 (or the process that spawned the ranks) writes here.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda f: json.dump(payload, f, indent=2, allow_nan=True), "w")


def atomic_torch_save(path: Path, payload: Any) -> None:
    import torch  # here, not at import: the command line records results without torch

    atomic_write(path, lambda f: torch.save(payload, f), "wb")


def versions() -> dict[str, str | None]:
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
