"""What each scheduler says about a sweep's jobs, and how to cancel them.

Job ids are submitit's: ``<array>_<index>`` or ``<id>`` on SLURM and LSF, the controller's pid on
``local``. States are SLURM's words (LSF's are mapped by submitit_lsf's watcher): an id the
scheduler does not know (any more) has no state, and the job's own records say how it ended.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# States of a job that still holds (or waits for) resources: resubmitting it would run it twice.
ACTIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        # LSF's ZOMBI and UNKWN: the job may still run.
        "UNKNOWN",
    }
)
PENDING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
_TIMEOUT_S = 60
# Seconds a local job has to stop after SIGINT before its tasks are killed.
KILL_WAIT_S = 5.0


class SchedulerError(RuntimeError):
    """The scheduler's command is missing or refused the request."""


def normalize(state: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``FAILED+`` -> ``FAILED``."""
    return state.split()[0].rstrip("+").upper() if state.strip() else "UNKNOWN"


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            list(command), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _expand(job_id: str) -> list[str]:
    """``12_[1-3,5%2]`` -> ``12_1 12_2 12_3 12_5``: pending array elements, as SLURM folds them."""
    match = re.fullmatch(r"(?P<job>\d+)_\[(?P<ranges>[^\]%]+)(%\d+)?\]", job_id)
    if match is None:
        return [job_id]
    out = []
    for part in match["ranges"].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{match['job']}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_pipe_table(text: str) -> dict[str, str]:
    """``id|STATE`` lines (squeue ``-o '%i|%T'``, ``sacct -P -o JobID,State``) -> id -> state."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep or not re.match(r"\d", job_id):
            continue
        for element in _expand(job_id):
            states[element] = normalize(state)
    return states


class Scheduler:
    """No scheduler: the jobs run inside the submitting process (``basic`` launcher)."""

    name = "basic"

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The state of every id the scheduler knows; ids it does not know are left out."""
        return {}

    def cancel(self, ids: Sequence[str]) -> None:
        raise SchedulerError(
            "the jobs of this sweep run inside its ue-sweep process, one after another: stop "
            "that process (Ctrl-C, or kill its pid from a job's result.json)"
        )


class SlurmScheduler(Scheduler):
    name = "slurm"

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The controller's view (``squeue``, recent ends included), then accounting (``sacct``)
        for jobs the controller has already forgotten."""
        if not ids:
            return {}
        bases = sorted({i.split("_")[0] for i in ids})
        queue = _run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(bases)])
        states = parse_pipe_table(queue.stdout) if queue is not None else {}
        queue_answered = queue is not None and queue.returncode == 0
        missing = [i for i in ids if i not in states]
        if missing:
            acct = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)])
            for job_id, state in (parse_pipe_table(acct.stdout) if acct else {}).items():
                # Accounting lags behind the controller: a job it still calls active but squeue
                # no longer lists has ended in a way it does not know yet.
                if job_id in missing and not (queue_answered and state in ACTIVE):
                    states[job_id] = state
        return {i: states[i] for i in ids if i in states}

    def cancel(self, ids: Sequence[str]) -> None:
        done = _run(["scancel", *ids])
        if done is None or done.returncode != 0:
            raise SchedulerError(f"scancel failed: {done.stderr.strip() if done else 'not found'}")


class LSFScheduler(Scheduler):
    name = "lsf"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """``bjobs``, then the job report and ``bhist`` for jobs LSF has forgotten (the LSF
        backend's own watcher)."""
        from submitit.core.utils import JobPaths

        from submitit_lsf.watcher import LSFInfoWatcher

        watcher = LSFInfoWatcher(delay_s=0)
        logs = JobPaths.get_first_id_independent_folder(self.folder)
        for job_id in ids:
            main, _, index = job_id.partition("_")
            watcher.register_job(job_id)
            watcher.register_log(job_id, logs / f"lsf_{main}_{int(index) + 1 if index else 0}.out")
        watcher.update()
        states = {}
        for job_id in ids:
            info = watcher.get_info(job_id, mode="cache")
            # Unknown to bjobs, to its job report and to bhist: LSF does not know the job.
            if info and not (info["LSFState"] == "forgotten" and info["State"] == "UNKNOWN"):
                states[job_id] = normalize(info["State"])
        return states

    def cancel(self, ids: Sequence[str]) -> None:
        from submitit_lsf.environment import lsf_job_ref

        done = _run(["bkill", *(lsf_job_ref(i) for i in ids)])
        if done is None or done.returncode != 0:
            raise SchedulerError(f"bkill failed: {done.stderr.strip() if done else 'not found'}")


class LocalScheduler(Scheduler):
    """submitit's local executor: each job is a controller process on the submitting host."""

    name = "local"

    def __init__(self, host: str | None) -> None:
        self.host = host

    def _controller(self, job_id: str) -> bool:
        """Whether ``job_id`` is a live submitit controller here (not a recycled pid)."""
        try:
            cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return b"submitit.local._local" in cmdline

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        if self.host != socket.gethostname():
            return {}  # another host's processes cannot be looked up
        return {i: "RUNNING" for i in ids if self._controller(i)}

    def cancel(self, ids: Sequence[str]) -> None:
        """SIGINT to each controller, as submitit's ``LocalJob.cancel`` sends: it stops its tasks
        and exits. A controller started in the background of a script ignores SIGINT, and the
        tasks ignore SIGTERM (submitit's job environment), so after ``KILL_WAIT_S`` its tasks
        are killed, as SLURM kills a job after KillWait; the controller then ends by itself."""
        if self.host != socket.gethostname():
            raise SchedulerError(f"the jobs run on {self.host}: cancel them there")
        controllers = [int(i) for i in ids if self._controller(i)]
        for pid in controllers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + KILL_WAIT_S
        while any(self._controller(str(p)) for p in controllers) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in controllers:
            for task in _descendants(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(task, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def scheduler_for(launcher: str, folder: Path | None, host: str | None) -> Scheduler:
    """The scheduler of a job table's ``launcher`` (``basic``, ``local``, ``slurm``, ``lsf``)."""
    if launcher == "slurm":
        return SlurmScheduler()
    if launcher == "lsf":
        return LSFScheduler(folder or Path("."))
    if launcher == "local":
        return LocalScheduler(host)
    return Scheduler()
