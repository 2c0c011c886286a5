"""Job states for submitit from ``bjobs``, and from what is left once LSF has forgotten a job.

``bjobs -a`` lists finished jobs only until CLEAN_PERIOD (1 h by default) has passed. A job that
ended without a result file (run limit, node failure, ``bkill``) and is no longer listed would
stay UNKNOWN for ever, so for an id ``bjobs`` reports as not found the watcher reads LSF's job
report at the end of the job's output file (``-o``), then ``bhist -l``; a job none of them knows
for ``lost_after_s`` is reported as LOST, which submitit takes as finished. Both read the job's
last run only (a requeued job's earlier runs exited). ``bhist`` searches the current event log
only (no ``-n 0``, which scans every log file, for every forgotten job, at every poll).

A job that stays in a state only a person ends (PSUSP: suspended while pending, as LSF does after
repeated failed starts; USUSP; ZOMBI; UNKWN) for ``stuck_after_s`` is reported as STUCK, with a
warning naming it and what to do, instead of being waited on for ever.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from submitit.core import core, logger

from submitit_lsf.environment import lsf_job_ref

# LSF job states (bjobs STAT) as submitit's SLURM-style states. ZOMBI: LSF lost contact with
# the job, which may still run; PROV: the hosts are being provisioned.
STATES = {
    "PEND": "PENDING",
    "WAIT": "PENDING",
    "PSUSP": "PENDING",
    "PROV": "PENDING",
    "RUN": "RUNNING",
    "USUSP": "SUSPENDED",
    "SSUSP": "SUSPENDED",
    "DONE": "COMPLETED",
    "POST_DONE": "COMPLETED",
    "EXIT": "FAILED",
    "POST_ERR": "FAILED",
    "ZOMBI": "UNKNOWN",
    "UNKWN": "UNKNOWN",
}
UNFINISHED = {"PENDING", "RUNNING", "SUSPENDED", "UNKNOWN", "REQUEUED"}
# LSF states that last until someone acts (bresume, bkill, an administrator).
STUCK_STATES = {"PSUSP", "USUSP", "ZOMBI", "UNKWN"}
# Termination reasons (bacct/bhist/job report keywords) that say more than "failed".
REASONS = {
    "TERM_OWNER": "CANCELLED",
    "TERM_ADMIN": "CANCELLED",
    "TERM_FORCE_OWNER": "CANCELLED",
    "TERM_FORCE_ADMIN": "CANCELLED",
    "TERM_RUNLIMIT": "TIMEOUT",
}
BJOBS_FORMAT = "jobid jobindex stat exit_code delimiter='|'"
# "1002" or, with LSB_BJOBS_DISPLAY_ENH=Y, "1002[3]".
JOB_ID = re.compile(r"(?P<job>\d+)(\[(?P<index>\d+)\])?")
NOT_FOUND = re.compile(r"Job <(?P<job>\d+)(\[\d+\])?> is not found")
TERM_REASON = re.compile(r"\b(TERM_[A-Z_]+)")
# bhist's line for a requeue: "Pending: Requeued job is waiting for rescheduling" (bsub -Q,
# REQUEUE_EXIT_VALUES), "Pending: Job has been requeued" (brequeue).
REQUEUED = re.compile(r"Pending: [^;.]*requeued", re.IGNORECASE)


def _key(job: str, index: str) -> str:
    return job if index in ("", "0", "-") else f"{job}_{int(index) - 1}"


def _final_state(text: str, done: str, *exited: str) -> str | None:
    """The state a job report or ``bhist -l`` text ends in, or None while it has no end."""
    if any(marker in text for marker in exited):
        reasons = TERM_REASON.findall(text)
        return REASONS.get(reasons[-1], "FAILED") if reasons else "FAILED"
    return "COMPLETED" if done in text else None


def state_from_report(log: Path) -> str | None:
    """The final state in LSF's job report, appended to the job's output file when it ends."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    last = text.rpartition("Sender: LSF System")[2]  # the report of the job's last run
    return _final_state(last, "Successfully completed.", "Exited with exit code")


def state_from_bhist(ref: str, timeout_s: float = 30.0) -> str | None:
    """The final state of the job's last run in ``bhist -l`` (LSF's current event log outlives
    CLEAN_PERIOD; older logs are not searched)."""
    try:
        command = ["bhist", "-l", ref]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = " ".join(done.stdout.split())  # bhist wraps its lines
    last = REQUEUED.split(text)[-1]  # the events since the last requeue
    return _final_state(last, "Done successfully", "Exited with exit code", "Exited by signal")


class LSFInfoWatcher(core.InfoWatcher):
    """Polls ``bjobs -o`` for every registered job in one call."""

    # A job that bjobs, the job report and bhist all do not know is lost after this long.
    lost_after_s: float = 600.0
    # A job in one of STUCK_STATES for this long is reported as STUCK.
    stuck_after_s: float = 3600.0

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._logs: dict[str, Path] = {}
        self._missing_since: dict[str, float] = {}
        self._stuck_since: dict[str, float] = {}

    def register_log(self, job_id: str, log: Path) -> None:
        """Where LSF writes the job's output file (``-o``), for its final report."""
        self._logs[job_id] = log

    def _make_command(self) -> list[str] | None:
        to_check = sorted({job.split("_")[0] for job in self._registered - self._finished})
        if not to_check:
            return None
        return ["bjobs", "-a", "-noheader", "-o", BJOBS_FORMAT, *to_check]

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_state(job_id, mode=mode).upper() not in UNFINISHED

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        """Parse ``jobid|jobindex|stat|exit_code`` lines; array elements become ``id_index-1``."""
        if not isinstance(string, str):
            string = string.decode()
        info: dict[str, dict[str, str]] = {}
        for line in string.splitlines():
            fields = line.strip().split("|")
            match = JOB_ID.fullmatch(fields[0])
            if len(fields) != 4 or match is None:
                continue  # "Job <x> is not found" and other chatter
            _, index, stat, exit_code = fields
            key = _key(match["job"], match["index"] or index)
            info[key] = {
                "JobID": key,
                "State": STATES.get(stat, "UNKNOWN"),
                "LSFState": stat,
                "ExitCode": exit_code,
            }
        return info

    def update(self) -> None:
        """One ``bjobs`` call; its answer counts whatever its exit status (it is non-zero as soon
        as one id is unknown), and ids it does not know are looked up elsewhere."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            logger.get_logger().warning(f"bjobs failed ({err}); states may be out of date")
        else:
            self._output = answer.stdout.encode()
            info = self.read_info(answer.stdout)
            forgotten = {m["job"] for m in NOT_FOUND.finditer(answer.stderr)}
            for job_id in self._registered - self._finished:
                if job_id in info:
                    self._missing_since.pop(job_id, None)
                    if info[job_id]["State"] == "FAILED":
                        info[job_id]["State"] = self._why_failed(job_id)
                    self._check_stuck(job_id, info[job_id])
                elif job_id.split("_")[0] in forgotten:
                    info[job_id] = self._forgotten(job_id)
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _check_stuck(self, job_id: str, info: dict[str, str]) -> None:
        """Report a job that has been in a stuck state for ``stuck_after_s`` as STUCK."""
        if info["LSFState"] not in STUCK_STATES:
            self._stuck_since.pop(job_id, None)
            return
        since = self._stuck_since.setdefault(job_id, time.time())
        if time.time() - since >= self.stuck_after_s:
            info["State"] = "STUCK"
            ref = lsf_job_ref(job_id)
            logger.get_logger().warning(
                f"LSF job {ref} has been {info['LSFState']} for {time.time() - since:.0f}s and "
                f"is taken as stuck (not waited on any more): see `bjobs -l {ref}`, then "
                f"`bresume {ref}` or `bkill {ref}`; a later launch of the sweep resubmits it "
                "once it has left LSF"
            )

    def _report(self, job_id: str) -> str | None:
        log = self._logs.get(job_id)
        return None if log is None else state_from_report(log)

    def _why_failed(self, job_id: str) -> str:
        """FAILED, or what the job report or bhist says it was: CANCELLED (bkill) or TIMEOUT."""
        state = self._report(job_id) or state_from_bhist(lsf_job_ref(job_id))
        return state if state in ("CANCELLED", "TIMEOUT") else "FAILED"

    def _forgotten(self, job_id: str) -> dict[str, str]:
        state = self._report(job_id) or state_from_bhist(lsf_job_ref(job_id))
        if state is None:
            first = self._missing_since.setdefault(job_id, time.time())
            state = "LOST" if time.time() - first >= self.lost_after_s else "UNKNOWN"
            if state == "LOST":
                logger.get_logger().warning(
                    f"LSF job {lsf_job_ref(job_id)} is unknown to bjobs and bhist and left no "
                    f"job report for {self.lost_after_s:g}s: taken as lost"
                )
        return {"JobID": job_id, "State": state, "LSFState": "forgotten", "ExitCode": "-"}
