"""A small LSF emulator for tests: no open LSF exists in the package registries.

This is a TEST DOUBLE, not LSF. It implements what ue-sweep's LSF backend uses, in the formats of
IBM Spectrum LSF 10.1 (bsub, bjobs -o, bhist -l, bkill, brequeue; job environment variables
LSB_JOBID, LSB_JOBINDEX, LSB_DJOB_HOSTFILE, LSB_HOSTS; the job report appended to the -o file)
and of IBM Job Step Manager's jsrun (resource sets, JSM_NAMESPACE_RANK / _LOCAL_RANK / _SIZE /
_LOCAL_SIZE):

- ``bsub`` reads the job script from stdin, parses its ``#BSUB`` lines (unknown options are an
  error, as in LSF; arrays over ``LSF_EMULATOR_MAX_ARRAY_SIZE``, default 1000, are refused),
  prints ``Job <id> is submitted to queue <q>.`` and starts a detached runner. With
  ``LSF_EMULATOR_RESOURCE_RESERVE_PER_TASK=Y`` (lsb.params' RESOURCE_RESERVE_PER_TASK) a
  ``-gpu "num=N"`` or ``rusage[mem=M]`` without ``/host`` is reserved per slot; a job whose
  per-host reservation exceeds a host (``LSF_EMULATOR_HOST_GPUS``, 8; ``LSF_EMULATOR_HOST_MEM_GB``,
  256) pends for ever, as in LSF;
- the runner runs each job (array element) as ``bash script`` with LSF's variables and a host
  file: with ``-nnodes`` (IBM CSM) its first line is the launch node that runs the job shell
  (``batch1``, or ``LSF_EMULATOR_LAUNCH_HOST``; the job shell's ``hostname`` prints that name),
  with ``-n``/``span[ptile]`` (plain LSF) it lists ``ptile`` slots per compute host and the job
  shell runs on the first. It honours ``-W`` and ``-wa/-wt`` (one emulated minute lasts
  ``LSF_EMULATOR_MINUTE`` seconds) and the array's ``%P`` limit, requeues a job that exits with
  a ``-Q`` exit value, and appends LSF's job report (``Successfully completed.`` / ``TERM_...`` /
  ``Exited with exit code N.``) to the -o file. ``-wa`` and ``bkill -s`` signal the job shell's
  process group only: tasks that jsrun and blaunch start run in their own sessions, as on other
  hosts, and neither forwards the warning signal;
- ``bjobs -a -noheader -o "jobid jobindex stat exit_code submit_time delimiter='|'"`` answers per
  element (``submit_time`` as ``Dec  2 22:40``; ``LSF_EMULATOR_SUBMIT_TIME`` fakes it),
  with ``id[index]`` ids when ``LSB_BJOBS_DISPLAY_ENH=Y``; it prints ``Job <id> is not found``
  and exits 255 for an unknown id, and forgets a finished job ``LSF_EMULATOR_CLEAN_PERIOD``
  seconds after its end (LSF's CLEAN_PERIOD; never by default);
- ``bhist -l`` tells each run of a job (an ``Exited`` run, ``Pending: ...requeued``, then the
  next run's end), unless ``LSF_EMULATOR_NO_HISTORY=1`` (event log rotated); every call's
  arguments are logged to ``bhist_calls`` in the state directory;
- ``bkill [-s SIG]`` and ``brequeue`` act on ``id`` or ``id[index]``; ``bkill`` of several ids
  ends those it can and, for a finished one, prints ``Job <id>: Job has already finished`` and
  exits 255. ``brequeue`` is refused in tasks (``LSF_EMULATOR_COMPUTE_NODE``), as on sites that
  allow no LSF commands on compute nodes, and lands ``LSF_EMULATOR_BREQUEUE_DELAY`` seconds
  (0.5) later, as mbatchd acts on it: a job shell that has exited by then stays exited;
- ``jsrun -n N -a A -c C -g G -r R -b packed:C [--smpiargs=...] cmd`` starts N x A tasks with
  JSM variables (a resource set's G GPUs renumbered from 0); ``blaunch -z host [-no-shell] cmd``
  runs cmd here, through ``sh -c`` (re-split, as blaunch's shell does) unless ``-no-shell``.
  Neither binds CPUs; both record their tasks so that a kill of the job reaches them.

Emulated compute hosts are named 127.0.0.N, which resolve to this machine. State lives in
``$LSF_EMULATOR_STATE``; run ``python -m tests.lsf_emulator install BIN_DIR`` to get the commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

COMMANDS = ("bsub", "bjobs", "bhist", "bkill", "brequeue", "jsrun", "blaunch")
REQUEUE_TEXT = "Pending: Requeued job is waiting for rescheduling"
# bsub options the emulator understands, and whether they take a value.
BSUB_OPTIONS = {
    "-J": True,
    "-nnodes": True,
    "-n": True,
    "-R": True,
    "-gpu": True,
    "-W": True,
    "-P": True,
    "-q": True,
    "-o": True,
    "-e": True,
    "-wa": True,
    "-wt": True,
    "-alloc_flags": True,
    "-Q": True,
    "-M": True,
    "-G": True,
    "-B": False,
    "-N": False,
}
BJOBS_FIELDS = {"jobid", "jobindex", "stat", "exit_code", "job_name", "queue", "submit_time"}
CORES_PER_HOST = 4


def state_dir() -> Path:
    path = Path(os.environ["LSF_EMULATOR_STATE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked() -> Any:
    with open(state_dir() / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


def job_file(job_id: int) -> Path:
    return state_dir() / f"job_{job_id}.json"


def load(job_id: int) -> dict[str, Any]:
    return json.loads(job_file(job_id).read_text())


def store(job: dict[str, Any]) -> None:
    tmp = job_file(job["id"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(job_file(job["id"]))


def update(job_id: int, index: int, **changes: Any) -> dict[str, Any]:
    with locked():
        job = load(job_id)
        job["elements"][str(index)].update(changes)
        store(job)
        return job["elements"][str(index)]


def minute() -> float:
    return float(os.environ.get("LSF_EMULATOR_MINUTE", "60"))


# ------------------------------------------------------------------------------------------ bsub


def parse_bsub(script: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for line in script.splitlines():
        if not line.startswith("#BSUB"):
            continue
        words = shlex.split(line[len("#BSUB") :])
        while words:
            flag = words.pop(0)
            if flag not in BSUB_OPTIONS:
                raise SystemExit(f"{flag}: Illegal option")
            value = words.pop(0) if BSUB_OPTIONS[flag] else True
            if flag == "-R":  # may be given several times; LSF merges them
                options.setdefault(flag, []).append(value)
            else:
                options[flag] = value
    if "-W" not in options or not re.fullmatch(r"(\d+:)?\d+", options["-W"]):
        raise SystemExit("-W: a run limit of [hour:]minute is required")
    return options


def bsub(argv: list[str]) -> None:
    script = sys.stdin.read()
    options = parse_bsub(script)
    name, indices, limit = options.get("-J", "NONAME"), [0], None
    array = re.fullmatch(r"(?P<name>[^\[]+)\[(?P<lo>\d+)-(?P<hi>\d+)\](%(?P<limit>\d+))?", name)
    if array:
        name = array["name"]
        indices = list(range(int(array["lo"]), int(array["hi"]) + 1))
        limit = int(array["limit"]) if array["limit"] else None
        if len(indices) > int(os.environ.get("LSF_EMULATOR_MAX_ARRAY_SIZE", "1000")):
            raise SystemExit(f"{options['-J']}: Job array size exceeds MAX_JOB_ARRAY_SIZE")
    unsatisfiable = _unsatisfiable(options)
    with locked():
        counter = state_dir() / "next_id"
        job_id = int(counter.read_text()) if counter.exists() else 1000
        counter.write_text(str(job_id + 1))
        script_path = state_dir() / f"job_{job_id}.sh"
        script_path.write_text(script)
        hours, _, minutes = options["-W"].rpartition(":")
        store(
            {
                "id": job_id,
                "name": name,
                "script": str(script_path),
                "options": options,
                "walltime_min": int(hours or 0) * 60 + int(minutes),
                "limit": limit,
                "launch_host": os.environ.get("LSF_EMULATOR_LAUNCH_HOST", "batch1"),
                "cwd": os.getcwd(),
                "submit_time": os.environ.get("LSF_EMULATOR_SUBMIT_TIME")
                or time.strftime("%b %e %H:%M"),
                "unsatisfiable": unsatisfiable,
                "elements": {
                    str(i): {
                        "stat": "PEND",
                        "exit_code": None,
                        "pgid": None,
                        "requeue_at": None,
                        "runs": 0,
                        "history": [],
                    }
                    for i in indices
                },
            }
        )
    subprocess.Popen(
        [sys.executable, "-m", "tests.lsf_emulator", "run-job", str(job_id)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"Job <{job_id}> is submitted to queue <{options.get('-q', 'normal')}>.")


def _unsatisfiable(options: dict[str, Any]) -> str | None:
    """Why no host can take the job's per-host reservation (then it pends for ever), or None."""
    per_task = os.environ.get("LSF_EMULATOR_RESOURCE_RESERVE_PER_TASK", "").upper() == "Y"
    spans = [m[1] for r in options.get("-R", []) for m in re.finditer(r"span\[ptile=(\d+)\]", r)]
    slots = int(spans[0]) if spans else int(options.get("-n", 1))
    asked = []
    gpu = re.search(r"num=(\d+)(/host|/task)?", options.get("-gpu", ""))
    if gpu:
        asked.append(("GPUs", int(gpu[1]), gpu[2], "LSF_EMULATOR_HOST_GPUS", 8))
    for rusage in options.get("-R", []):
        mem = re.search(r"rusage\[mem=(\d+)GB(/host|/task)?\]", rusage)
        if mem:
            asked.append(("GB of memory", int(mem[1]), mem[2], "LSF_EMULATOR_HOST_MEM_GB", 256))
    for what, value, method, variable, default in asked:
        per_slot = method == "/task" or (per_task and method is None)
        need, have = value * (slots if per_slot else 1), int(os.environ.get(variable, default))
        if need > have:
            return f"a host would need {need} {what} ({value} per slot), it has {have}"
    return None


# ------------------------------------------------------------------------------------ the runner


def _slots(job: dict[str, Any]) -> list[str]:
    """The host file's slots: under -nnodes the launch node, then the nodes' cores; under -n,
    ptile slots on each compute host."""
    options = job["options"]
    if "-nnodes" in options:
        nodes = [f"127.0.0.{n + 1}" for n in range(int(options["-nnodes"]))]
        return [job["launch_host"]] + [h for h in nodes for _ in range(CORES_PER_HOST)]
    total = int(options.get("-n", 1))
    spans = [m[1] for r in options.get("-R", []) for m in re.finditer(r"span\[ptile=(\d+)\]", r)]
    ptile = int(spans[0]) if spans else total
    return [f"127.0.0.{slot // ptile + 1}" for slot in range(total)]


def _job_shell_path(job: dict[str, Any]) -> str:
    """PATH for the job shell: under CSM it runs on the launch node, whose name `hostname` says."""
    if "-nnodes" not in job["options"]:
        return os.environ["PATH"]
    shim = state_dir() / f"launch_{job['id']}"
    shim.mkdir(exist_ok=True)
    (shim / "hostname").write_text(f"#!/bin/sh\necho {shlex.quote(job['launch_host'])}\n")
    (shim / "hostname").chmod(0o755)
    return f"{shim}{os.pathsep}{os.environ['PATH']}"


def _log_path(job: dict[str, Any], flag: str, index: int) -> str | None:
    if flag not in job["options"]:
        return None
    return job["options"][flag].replace("%J", str(job["id"])).replace("%I", str(index))


def _start(job: dict[str, Any], index: int) -> subprocess.Popen[bytes]:
    options, job_id = job["options"], job["id"]
    hostfile = state_dir() / f"hosts_{job_id}_{index}"
    slots = _slots(job)
    hostfile.write_text("\n".join(slots) + "\n")
    env = dict(
        os.environ,
        PATH=_job_shell_path(job),
        LSB_JOBID=str(job_id),
        LSB_JOBINDEX=str(index),
        LSB_JOBNAME=job["name"] + (f"[{index}]" if index else ""),
        LSB_QUEUE=options.get("-q", "normal"),
        LSB_DJOB_HOSTFILE=str(hostfile),
        LSB_HOSTS=" ".join(slots),
    )

    def output(flag: str) -> Any:
        path = _log_path(job, flag, index)
        return subprocess.DEVNULL if path is None else open(path, "ab")

    stdout = output("-o")
    stderr = output("-e") if "-e" in options else subprocess.STDOUT
    return subprocess.Popen(
        ["bash", job["script"]],
        cwd=job["cwd"],
        env=env,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


# The termination reasons the emulator produces, with the text LSF writes after the keyword.
REASON_TEXT = {
    "TERM_OWNER": "job killed by owner.",
    "TERM_RUNLIMIT": "job killed after reaching LSF run time limit.",
}


def _history(job_id: int, index: int, event: str, **changes: Any) -> None:
    """Append an event to the element's bhist record (with other changes, atomically)."""
    with locked():
        job = load(job_id)
        element = job["elements"][str(index)]
        element["history"].append(f"{time.ctime()}: {event}")
        element.update(changes)
        store(job)


def _finish(job: dict[str, Any], index: int, code: int | None, reason: str | None) -> None:
    """Record the element's end, its bhist events, and append the job report to its -o file."""
    ref = f"{job['id']}[{index}]" if index else str(job["id"])
    if code is None:
        ending, report = "Done successfully.", "Successfully completed."
    else:
        ending = f"Exited with exit code {code}."
        report = ending if reason is None else f"{reason}: {REASON_TEXT[reason]}\n{ending}"
        if reason is not None:
            ending += f" Completed <exit>; {reason}: {REASON_TEXT[reason]}"
    _history(job["id"], index, ending, stat="DONE" if code is None else "EXIT", exit_code=code)
    update(job["id"], index, ended=time.time())
    path = _log_path(job, "-o", index)
    if path is not None:
        with open(path, "a") as log:
            log.write(
                f"\n------------------------------------------------------------\n"
                f"Sender: LSF System <lsfadmin@127.0.0.1>\n"
                f"Subject: Job {ref}: <{job['name']}> in cluster <emulated> "
                f"{'Done' if code is None else 'Exited'}\n\n{report}\n\n"
                "Resource usage summary:\n\n    CPU time :   0.00 sec.\n"
            )


def _requeue_codes(options: dict[str, Any]) -> set[int]:
    """The exit codes of ``-Q "n ..."`` (the numbers only; no ``all``/``~``/``EXCLUDE``)."""
    return {int(word) for word in options.get("-Q", "").split() if word.isdigit()}


def _supervise(job: dict[str, Any], index: int) -> None:
    """Run one element to its end, through requeues, walltime warning and run limit."""
    options = job["options"]
    while True:
        proc = _start(job, index)
        runs = load(job["id"])["elements"][str(index)]["runs"]
        update(job["id"], index, stat="RUN", pgid=proc.pid, requeue_at=None, runs=runs + 1)
        started = time.monotonic()
        limit = job["walltime_min"] * minute()
        warn_at = limit - int(options.get("-wt", 0)) * minute() if "-wa" in options else None
        warned, killed_by_limit, requeued = False, False, False
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if warn_at is not None and not warned and elapsed >= warn_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, getattr(signal, f"SIG{options['-wa']}"))
                warned = True
            if elapsed >= limit:
                killed_by_limit = True
                _kill_element(job["id"], index, proc.pid)
            requeue_at = load(job["id"])["elements"][str(index)]["requeue_at"]
            if not requeued and requeue_at is not None and time.time() >= requeue_at:
                requeued = True  # brequeue lands while the job runs: kill it, then requeue
                _kill_element(job["id"], index, proc.pid)
            time.sleep(0.1)
        element = load(job["id"])["elements"][str(index)]
        code = proc.returncode % 256
        if requeued:
            _history(job["id"], index, f"Exited with exit code {code}.")
            _history(job["id"], index, "Pending: Job has been requeued;", stat="PEND")
            continue
        if code in _requeue_codes(options) and not element.get("killed") and not killed_by_limit:
            _history(job["id"], index, f"{REQUEUE_TEXT};(exit code {code})", stat="PEND")
            continue
        if element.get("killed"):
            _finish(job, index, 130, "TERM_OWNER")
        elif killed_by_limit:
            _finish(job, index, 140, "TERM_RUNLIMIT")
        else:
            _finish(job, index, None if code == 0 else code, None)
        return


def run_job(job_id: int) -> None:
    job = load(job_id)
    if job["unsatisfiable"]:
        return  # pending for ever: bjobs keeps saying PEND
    pending = [int(i) for i in job["elements"]]
    limit = job["limit"] or len(pending)
    running: dict[int, threading.Thread] = {}
    while pending or running:
        for index in [i for i, t in running.items() if not t.is_alive()]:
            del running[index]
        while pending and len(running) < limit:
            index = pending.pop(0)
            running[index] = threading.Thread(target=_supervise, args=(job, index))
            running[index].start()
        time.sleep(0.1)


def _tasks_file(job_id: str | int, index: str | int) -> Path:
    return state_dir() / f"tasks_{job_id}_{index}"


def _register_task(pid: int) -> None:
    """Record a task that jsrun/blaunch started in its own session, for kills of the job."""
    with locked(), open(_tasks_file(os.environ["LSB_JOBID"], os.environ["LSB_JOBINDEX"]), "a") as f:
        f.write(f"{pid}\n")


def _kill_element(job_id: int, index: int, pgid: int) -> None:
    """End the job shell's process group and every task group jsrun/blaunch started."""
    path = _tasks_file(job_id, index)
    tasks = [int(line) for line in path.read_text().split()] if path.exists() else []
    for group in (pgid, *tasks):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    time.sleep(0.5)
    for group in (pgid, *tasks):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# ---------------------------------------------------------------------------- bjobs bkill brequeue


def _refs(argv: list[str]) -> list[tuple[int, int | None]]:
    refs = []
    for arg in argv:
        match = re.fullmatch(r"(\d+)(\[(\d+)\])?", arg)
        if match is None:
            raise SystemExit(f"{arg}: Illegal job ID")
        refs.append((int(match[1]), int(match[3]) if match[3] else None))
    return refs


def bjobs(argv: list[str]) -> None:
    fmt, refs, header = None, [], True
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            fmt = next(args)
        elif arg == "-noheader":
            header = False
        elif arg != "-a":
            refs.append(arg)
    match = re.fullmatch(r"(?P<fields>[\w ]+?)\s+delimiter='(?P<delim>.)'", fmt or "")
    if match is None:
        raise SystemExit(f"bjobs -o {fmt!r}: expected fields then delimiter='c'")
    fields = match["fields"].split()
    if set(fields) - BJOBS_FIELDS:
        raise SystemExit(f"bjobs -o: unknown fields {sorted(set(fields) - BJOBS_FIELDS)}")
    if header:
        print(match["delim"].join(f.upper() for f in fields))
    enhanced = os.environ.get("LSB_BJOBS_DISPLAY_ENH", "").upper() == "Y"
    status = 0
    for job_id, only in _refs(refs):
        if not job_file(job_id).exists() or _forgotten(load(job_id)):
            print(f"Job <{job_id}> is not found", file=sys.stderr)
            status = 255
            continue
        job = load(job_id)
        for index, element in job["elements"].items():
            if only is not None and int(index) != only:
                continue
            values = {
                "jobid": f"{job_id}[{index}]" if enhanced and index != "0" else job_id,
                "jobindex": index,
                "stat": element["stat"],
                "exit_code": "-" if element["exit_code"] is None else element["exit_code"],
                "job_name": job["name"],
                "queue": job["options"].get("-q", "normal"),
                "submit_time": job["submit_time"],
            }
            print(match["delim"].join(str(values[f]) for f in fields))
    sys.exit(status)


def _forgotten(job: dict[str, Any]) -> bool:
    """Past CLEAN_PERIOD after its last element ended, LSF no longer lists a job."""
    period = os.environ.get("LSF_EMULATOR_CLEAN_PERIOD")
    ends = [element.get("ended") for element in job["elements"].values()]
    if period is None or None in ends:
        return False
    return time.time() - max(ends) >= float(period)


def bhist(argv: list[str]) -> None:
    """``bhist -l [-n N] ref``: how each element ended, from the emulated event log."""
    refs = [a for a in argv if re.fullmatch(r"\d+(\[\d+\])?", a)]
    with open(state_dir() / "bhist_calls", "a") as calls:
        calls.write(shlex.join(argv) + "\n")
    if os.environ.get("LSF_EMULATOR_NO_HISTORY") == "1":
        print("No matching job found", file=sys.stderr)
        sys.exit(255)
    for job_id, only in _refs(refs):
        if not job_file(job_id).exists():
            print("No matching job found", file=sys.stderr)
            continue
        job = load(job_id)
        for index, element in job["elements"].items():
            if only is not None and int(index) != only:
                continue
            ref = f"{job_id}[{index}]" if index != "0" else str(job_id)
            print(f"Job <{ref}>, Job Name <{job['name']}>, User <emulated>, Project <default>")
            for event in element["history"]:
                print(event)


def set_state(job_id: int, index: int, stat: str) -> None:
    """Put an element in a state the emulator does not reach by itself (ZOMBI, PROV, POST_*)."""
    update(job_id, index, stat=stat)


def bkill(argv: list[str]) -> None:
    """``bkill ref ...`` ends the elements (asynchronously, as LSF's daemons do: the command may
    run inside the job it acts on); ``bkill -s SIG ref`` only signals the running ones' job
    shells. A finished job is reported, the others still ended, and the exit status is 255."""
    signum = getattr(signal, f"SIG{argv[1]}") if argv[:1] == ["-s"] else None
    status = 0
    for job_id, only in _refs(argv[2:] if signum else argv):
        if not job_file(job_id).exists():
            print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
            status = 255
            continue
        for index, element in load(job_id)["elements"].items():
            if only is not None and int(index) != only:
                continue
            ref = f"{job_id}[{index}]" if index != "0" else str(job_id)
            if element["stat"] in ("DONE", "EXIT"):
                print(f"Job <{ref}>: Job has already finished", file=sys.stderr)
                status = 255
            elif signum is not None:
                if element["stat"] == "RUN":
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(element["pgid"], signum)
                print(f"Job <{ref}> is being signaled")
            else:
                update(job_id, int(index), killed=True)
                if element["stat"] != "PEND" and element["pgid"]:
                    _kill_later(job_id, int(index), element["pgid"])
                print(f"Job <{ref}> is being terminated")
    sys.exit(status)


def _kill_later(job_id: int, index: int, pgid: int) -> None:
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.lsf_emulator",
            "kill-element",
            *map(str, (job_id, index, pgid)),
        ],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def brequeue(argv: list[str]) -> None:
    """Asks mbatchd to requeue: it acts ``LSF_EMULATOR_BREQUEUE_DELAY`` seconds later, on a job
    that still runs then."""
    if os.environ.get("LSF_EMULATOR_COMPUTE_NODE"):
        raise SystemExit("brequeue: LSF commands are not allowed on compute nodes")
    delay = float(os.environ.get("LSF_EMULATOR_BREQUEUE_DELAY", "0.5"))
    for job_id, only in _refs([a for a in argv if not a.startswith("-")]):
        for index, element in load(job_id)["elements"].items():
            if (only is None or int(index) == only) and element["stat"] == "RUN":
                update(job_id, int(index), requeue_at=time.time() + delay)
                ref = f"{job_id}[{index}]" if index != "0" else str(job_id)
                print(f"Job <{ref}> is being requeued")


# -------------------------------------------------------------------------------- jsrun blaunch


def _run_tasks(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    """Start each task in its own session (as on another host), record it for kills of the job,
    and exit with the highest exit status. The warning signal is not forwarded: it only reaches
    the job shell's process group, where this launcher ignores it."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    procs = []
    for argv, env in commands:
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
        _register_task(procs[-1].pid)
    sys.exit(max(proc.wait() % 256 for proc in procs))


def jsrun(argv: list[str]) -> None:
    short = {
        "-n": "nrs",
        "-a": "tasks_per_rs",
        "-c": "cpu_per_rs",
        "-g": "gpu_per_rs",
        "-r": "rs_per_host",
        "-b": "bind",
    }
    opts: dict[str, str] = {}
    args = list(argv)
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag.startswith("--"):
            key, _, value = flag[2:].partition("=")
            opts[key] = value or args.pop(0)
        elif flag in short:
            opts[short[flag]] = args.pop(0)
        else:
            raise SystemExit(f"jsrun: unknown option {flag}")
    bind = opts.get("bind", "packed:1")
    if not re.fullmatch(r"packed:\d+|rs|none", bind):
        raise SystemExit(f"jsrun: invalid binding {bind}")
    sets, per_set = int(opts["nrs"]), int(opts.get("tasks_per_rs", "1"))
    per_host = int(opts.get("rs_per_host", opts["nrs"])) * per_set
    total, gpus = sets * per_set, int(opts.get("gpu_per_rs", "0"))
    commands = []
    for rank in range(total):
        env = dict(
            os.environ,
            JSM_NAMESPACE_RANK=str(rank),
            JSM_NAMESPACE_LOCAL_RANK=str(rank % per_host),
            JSM_NAMESPACE_SIZE=str(total),
            JSM_NAMESPACE_LOCAL_SIZE=str(per_host),
            LSF_EMULATOR_COMPUTE_NODE="1",
        )
        if gpus:  # the resource set's own GPUs, renumbered from 0
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(gpus))
        commands.append((args, env))
    _run_tasks(commands)


def blaunch(argv: list[str]) -> None:
    """``blaunch -z HOST [-no-shell | -use-login-shell] COMMAND...``."""
    if argv[:1] != ["-z"]:
        raise SystemExit("emulator: only blaunch -z HOST [-no-shell] COMMAND")
    command = argv[2:]
    shell = command[:1] != ["-no-shell"]
    if command[:1] in (["-no-shell"], ["-use-login-shell"]):
        command = command[1:]
    if shell:  # the command line goes through a shell again: its words are split once more
        command = ["sh", "-c", " ".join(command)]
    _run_tasks([(command, dict(os.environ, LSF_EMULATOR_COMPUTE_NODE="1"))])


def install(bin_dir: str) -> None:
    """Write the emulated commands into ``bin_dir`` (put it first on PATH)."""
    root = Path(__file__).resolve().parents[1]
    for command in COMMANDS:
        path = Path(bin_dir) / command
        path.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}} "
            f'exec {shlex.quote(sys.executable)} -m tests.lsf_emulator {command} "$@"\n'
        )
        path.chmod(0o755)


if __name__ == "__main__":
    verb, rest = sys.argv[1], sys.argv[2:]
    if verb == "run-job":
        run_job(int(rest[0]))
    elif verb == "kill-element":
        time.sleep(0.2)
        _kill_element(int(rest[0]), int(rest[1]), int(rest[2]))
    elif verb == "install":
        install(rest[0])
    else:
        {
            "bsub": bsub,
            "bjobs": bjobs,
            "bhist": bhist,
            "bkill": bkill,
            "brequeue": brequeue,
            "jsrun": jsrun,
            "blaunch": blaunch,
        }[verb](rest)
