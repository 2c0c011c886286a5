"""What each scheduler says about a sweep's jobs, and how to cancel them.

Job ids are submitit's: ``<array>_<index>`` or ``<id>`` on SLURM and LSF, the controller's pid on
``local``. States are SLURM's words (LSF's are mapped by submitit_lsf's watcher): an id the
scheduler does not know (any more) has no state, and the job's own records say how it ended.
Ids roll over (LSF's at 999999 by default), so the job table trusts an id only together with
when it was submitted (``submit_times``).
"""

from __future__ import annotations

import contextlib
import datetime
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


def parse_pipe_table(text: str, raw: bool = False) -> dict[str, str]:
    """``id|STATE`` lines (squeue ``-o '%i|%T'``, ``sacct -P -o JobID,State``) -> id -> state
    (or the second column as it is, ``raw=True``)."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep or not re.match(r"\d", job_id):
            continue
        for element in _expand(job_id):
            states[element] = state.strip() if raw else normalize(state)
    return states


# "scancel: error: Kill job error on job id 12_3: Job/step already completing or completed"
SCANCEL_ERROR = re.compile(r"job id (?P<id>[\d_]+): (?P<why>[^\n]+)")
# bkill: "Job <12[3]> is being terminated", "Job <12>: Job has already finished"
BKILL_DONE = re.compile(r"Job <(?P<ref>[^>]+)> is being (terminated|signaled)")
BKILL_ERROR = re.compile(r"Job <(?P<ref>[^>]+)>: (?P<why>[^\n]+)")


def local_epoch(text: str) -> float | None:
    """Seconds since the epoch of a scheduler's local time stamp, or None if it is not one.

    SLURM: ``2026-12-02T22:40:01``; LSF's ``bjobs -o submit_time``: ``Dec  2 22:40`` (a year
    after it with LSB_DISPLAY_YEAR, seconds with some versions; without a year, the latest such
    date that is not in the future)."""
    text = " ".join(text.split())
    if not text or text in ("-", "Unknown", "None"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.fromisoformat(text).timestamp()
    now = datetime.datetime.now()
    for fmt in ("%b %d %H:%M %Y", "%b %d %H:%M:%S %Y"):
        for stamp, guessed in ((text, False), (f"{text} {now.year}", True)):
            try:
                when = datetime.datetime.strptime(stamp, fmt)
            except ValueError:
                continue
            if guessed and when > now + datetime.timedelta(days=1):
                when = when.replace(year=now.year - 1)
            return when.timestamp()
    return None


class Scheduler:
    """No scheduler: the jobs run inside the submitting process (``basic`` launcher)."""

    name = "basic"

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The state of every id the scheduler knows; ids it does not know are left out."""
        return {}

    def submit_times(self, ids: Sequence[str]) -> dict[str, float]:
        """When the scheduler's job of each id was submitted (epoch seconds), where it says."""
        return {}

    def cancel(self, ids: Sequence[str]) -> dict[str, str]:
        """Cancel the jobs; the ids it could not cancel, each with the scheduler's reason."""
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

    def submit_times(self, ids: Sequence[str]) -> dict[str, float]:
        """``squeue`` %V, then ``sacct``'s Submit for jobs the controller has forgotten."""
        if not ids:
            return {}
        bases = sorted({i.split("_")[0] for i in ids})
        queue = _run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%V", "-j", ",".join(bases)])
        times = parse_pipe_table(queue.stdout, raw=True) if queue is not None else {}
        missing = [i for i in ids if i not in times]
        if missing:
            acct = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,Submit", "-j", ",".join(missing)])
            times |= parse_pipe_table(acct.stdout, raw=True) if acct is not None else {}
        epochs = {i: local_epoch(times[i]) for i in ids if i in times}
        return {i: t for i, t in epochs.items() if t is not None}

    def cancel(self, ids: Sequence[str]) -> dict[str, str]:
        """``scancel`` of all the ids; one that ended meanwhile does not stop the others, and its
        error line names it."""
        done = _run(["scancel", *ids])
        if done is None:
            return dict.fromkeys(ids, "scancel not found or timed out")
        if done.returncode == 0:
            return {}
        errors = {m["id"]: m["why"] for m in SCANCEL_ERROR.finditer(done.stderr)}
        if not errors:  # not a per-job error: nothing can be said to be cancelled
            return dict.fromkeys(ids, done.stderr.strip() or f"scancel exit {done.returncode}")
        return {i: errors[i] for i in ids if i in errors}


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

    def submit_times(self, ids: Sequence[str]) -> dict[str, float]:
        """``bjobs -o submit_time``, per element; jobs LSF has forgotten are left out."""
        from submitit_lsf.watcher import JOB_ID

        if not ids:
            return {}
        bases = sorted({i.split("_")[0] for i in ids})
        fmt = "jobid jobindex submit_time delimiter='|'"
        done = _run(["bjobs", "-a", "-noheader", "-o", fmt, *bases])
        times: dict[str, float] = {}
        for line in done.stdout.splitlines() if done is not None else []:
            fields = line.strip().split("|")
            match = JOB_ID.fullmatch(fields[0])
            if len(fields) != 3 or match is None:
                continue
            index = match["index"] or fields[1]
            key = match["job"] if index in ("", "0", "-") else f"{match['job']}_{int(index) - 1}"
            when = local_epoch(fields[2])
            if key in ids and when is not None:
                times[key] = when
        return times

    def cancel(self, ids: Sequence[str]) -> dict[str, str]:
        """``bkill`` of all the ids, each one's outcome read from its own line: bkill exits
        non-zero as soon as one of them has ended, yet ends the others."""
        from submitit_lsf.environment import lsf_job_ref

        refs = {lsf_job_ref(i): i for i in ids}
        done = _run(["bkill", *refs])
        if done is None:
            return dict.fromkeys(ids, "bkill not found or timed out")
        output = done.stdout + "\n" + done.stderr
        killed = {refs[m["ref"]] for m in BKILL_DONE.finditer(output) if m["ref"] in refs}
        errors = {
            refs[m["ref"]]: m["why"] for m in BKILL_ERROR.finditer(output) if m["ref"] in refs
        }
        why = done.stderr.strip() or f"bkill exit {done.returncode}"
        return {i: errors.get(i, why) for i in ids if i not in killed}


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

    def cancel(self, ids: Sequence[str]) -> dict[str, str]:
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
        return {}


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
