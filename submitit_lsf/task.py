"""One task of an LSF job: log to submitit's per-task files, then run the pickled callable.

The job script starts this module once per rank (through jsrun, mpirun or blaunch), so log and
result files get submitit's usual names (``<job>_<rank>_log.out``) whatever the task launcher.
Each task also watches the job shell's signal marker: LSF's warning signal reaches the job shell
only, which writes the signal's name there, and the task raises that signal in itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from submitit.core.submission import process_job
from submitit.core.utils import JobPaths

from submitit_lsf.environment import LSFJobEnvironment


def _redirect(fd: int, path: os.PathLike[str]) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)


# Seconds between looks at the signal marker; LSF warns minutes (-wt) ahead.
SIGNAL_POLL_S = 1.0


def watch_signal_marker(marker: Path, poll_s: float = SIGNAL_POLL_S) -> threading.Thread:
    """A daemon thread that raises the signal named in ``marker`` in this process, once, when
    the file appears (the job shell removes any old one before the tasks start)."""

    def watch() -> None:
        while True:
            try:
                name = marker.read_text().strip()
            except OSError:
                time.sleep(poll_s)
                continue
            os.kill(os.getpid(), getattr(signal, f"SIG{name or 'USR2'}"))
            return

    thread = threading.Thread(target=watch, name="lsf-signal-marker", daemon=True)
    thread.start()
    return thread


def main(folder: str) -> None:
    os.environ["SUBMITIT_EXECUTOR"] = "lsf"
    env = LSFJobEnvironment()
    paths = JobPaths(folder, job_id=env.job_id, task_id=env.global_rank)
    paths.folder.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _redirect(1, paths.stdout)
    _redirect(2, paths.stderr)
    if os.environ.get("UE_LSF_SIGNAL_MARKER"):
        watch_signal_marker(Path(os.environ["UE_LSF_SIGNAL_MARKER"]))
    process_job(folder)


if __name__ == "__main__":
    main(sys.argv[1])
