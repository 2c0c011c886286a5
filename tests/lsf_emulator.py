"""A small LSF emulator for tests: no open LSF exists in the package registries.

This is a TEST DOUBLE, not LSF. It implements what ue-sweep's LSF backend uses, in the formats of
IBM Spectrum LSF 10.1 (bsub, bjobs -o, bhist -l, bkill, brequeue; job environment variables
LSB_JOBID, LSB_JOBINDEX, LSB_DJOB_HOSTFILE, LSB_HOSTS; the job report appended to the -o file)
and of IBM Job Step Manager's jsrun (resource sets, JSM_NAMESPACE_RANK / _LOCAL_RANK / _SIZE /
_LOCAL_SIZE):

- ``bsub`` reads the job script from stdin, parses its ``#BSUB`` lines (unknown options are an
  error, as in LSF; arrays over ``LSF_EMULATOR_MAX_ARRAY_SIZE``, default 1000, are refused),
  prints ``Job <id> is submitted to queue <q>.`` and starts a detached runner;
- the runner runs each job (array element) as ``bash script`` with LSF's variables and a host
  file: with ``-nnodes`` (IBM CSM) its first line is the launch node that runs the job shell
  (``batch1``, or ``LSF_EMULATOR_LAUNCH_HOST``; the job shell's ``hostname`` prints that name),
  with ``-n``/``span[ptile]`` (plain LSF) it lists ``ptile`` slots per compute host and the job
  shell runs on the first. It honours ``-W`` and ``-wa/-wt`` (one emulated minute lasts
  ``LSF_EMULATOR_MINUTE`` seconds) and the array's ``%P`` limit, and appends LSF's job report
  (``Successfully completed.`` / ``TERM_...`` / ``Exited with exit code N.``) to the -o file;
- ``bjobs -a -noheader -o "jobid jobindex stat exit_code delimiter='|'"`` answers per element,
  with ``id[index]`` ids when ``LSB_BJOBS_DISPLAY_ENH=Y``; it prints ``Job <id> is not found``
  and exits 255 for an unknown id, and forgets a finished job ``LSF_EMULATOR_CLEAN_PERIOD``
  seconds after its end (LSF's CLEAN_PERIOD; never by default);
- ``bhist -l`` tells how a job ended, unless ``LSF_EMULATOR_NO_HISTORY=1`` (event log rotated);
- ``bkill [-s SIG]`` and ``brequeue`` act on ``id`` or ``id[index]``; ``brequeue`` is refused
  in tasks (``LSF_EMULATOR_COMPUTE_NODE``), as on sites that allow no LSF commands on compute
  nodes;
- ``jsrun -n N -a 1 -c C -g G -r R -b packed:C [--smpiargs=...] cmd`` starts N tasks with JSM
  variables (GPU resource sets see their one GPU as device 0) and forwards signals; ``blaunch -z
  host cmd`` runs cmd locally. Neither binds CPUs.

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
    "-M": True,
    "-G": True,
    "-B": False,
    "-N": False,
}
BJOBS_FIELDS = {"jobid", "jobindex", "stat", "exit_code", "job_name", "queue"}
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
                "elements": {
                    str(i): {
                        "stat": "PEND",
                        "exit_code": None,
                        "pgid": None,
                        "requeue": False,
                        "runs": 0,
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
    update(
        job["id"],
        index,
        stat="DONE" if code is None else "EXIT",
        exit_code=code,
        ended=time.time(),
        history=f"{time.ctime()}: {ending}",
    )
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


def _supervise(job: dict[str, Any], index: int) -> None:
    """Run one element to its end, through requeues, walltime warning and run limit."""
    options = job["options"]
    while True:
        proc = _start(job, index)
        runs = load(job["id"])["elements"][str(index)]["runs"]
        update(job["id"], index, stat="RUN", pgid=proc.pid, requeue=False, runs=runs + 1)
        started = time.monotonic()
        limit = job["walltime_min"] * minute()
        warn_at = limit - int(options.get("-wt", 0)) * minute() if "-wa" in options else None
        warned, killed_by_limit = False, False
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if warn_at is not None and not warned and elapsed >= warn_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, getattr(signal, f"SIG{options['-wa']}"))
                warned = True
            if elapsed >= limit:
                killed_by_limit = True
                _kill_group(proc.pid)
            time.sleep(0.1)
        element = load(job["id"])["elements"][str(index)]
        if element["requeue"]:
            update(job["id"], index, stat="PEND")
            continue
        code = proc.returncode
        if element.get("killed"):
            _finish(job, index, 130, "TERM_OWNER")
        elif killed_by_limit:
            _finish(job, index, 140, "TERM_RUNLIMIT")
        else:
            _finish(job, index, None if code == 0 else code % 256, None)
        return


def run_job(job_id: int) -> None:
    job = load(job_id)
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


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        time.sleep(0.5)


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
            if element.get("history"):
                print(element["history"])


def set_state(job_id: int, index: int, stat: str) -> None:
    """Put an element in a state the emulator does not reach by itself (ZOMBI, PROV, POST_*)."""
    update(job_id, index, stat=stat)


def _signal_elements(argv: list[str], action: str, **flags: Any) -> None:
    """Flag the elements, then kill them asynchronously, as LSF's daemons do: the command may
    run inside the very job it acts on (a job requeueing itself)."""
    for job_id, only in _refs([a for a in argv if not a.startswith("-")]):
        for index, element in load(job_id)["elements"].items():
            if only is not None and int(index) != only:
                continue
            update(job_id, int(index), **flags)
            if element["stat"] not in ("PEND", "DONE", "EXIT") and element["pgid"]:  # started
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.lsf_emulator",
                        "kill-group",
                        str(element["pgid"]),
                    ],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            ref = f"{job_id}[{index}]" if index != "0" else str(job_id)
            print(f"Job <{ref}> is being {action}")


def bkill(argv: list[str]) -> None:
    """``bkill ref`` ends the elements; ``bkill -s SIG ref`` only signals the running ones."""
    if argv[:1] != ["-s"]:
        _signal_elements(argv, "terminated", killed=True)
        return
    signum = getattr(signal, f"SIG{argv[1]}")
    for job_id, only in _refs(argv[2:]):
        for index, element in load(job_id)["elements"].items():
            if (only is None or int(index) == only) and element["stat"] == "RUN":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(element["pgid"], signum)
                ref = f"{job_id}[{index}]" if index != "0" else str(job_id)
                print(f"Job <{ref}> is being signaled")


def brequeue(argv: list[str]) -> None:
    if os.environ.get("LSF_EMULATOR_COMPUTE_NODE"):
        raise SystemExit("brequeue: LSF commands are not allowed on compute nodes")
    _signal_elements(argv, "requeued", requeue=True)


# -------------------------------------------------------------------------------- jsrun blaunch


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
    if opts.get("tasks_per_rs", "1") != "1":
        raise SystemExit("emulator: one task per resource set only")
    bind = opts.get("bind", "packed:1")
    if not re.fullmatch(r"packed:\d+|rs|none", bind):
        raise SystemExit(f"jsrun: invalid binding {bind}")
    total, per_host = int(opts["nrs"]), int(opts.get("rs_per_host", opts["nrs"]))
    procs = []
    for rank in range(total):
        env = dict(
            os.environ,
            JSM_NAMESPACE_RANK=str(rank),
            JSM_NAMESPACE_LOCAL_RANK=str(rank % per_host),
            JSM_NAMESPACE_SIZE=str(total),
            JSM_NAMESPACE_LOCAL_SIZE=str(per_host),
            LSF_EMULATOR_COMPUTE_NODE="1",
        )
        if int(opts.get("gpu_per_rs", "0")):
            env["CUDA_VISIBLE_DEVICES"] = "0"  # the resource set's own GPU, renumbered
        procs.append(subprocess.Popen(args, env=env))

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    sys.exit(max(proc.wait() for proc in procs))


def blaunch(argv: list[str]) -> None:
    if argv[:1] != ["-z"]:
        raise SystemExit("emulator: only blaunch -z HOST COMMAND")
    os.environ["LSF_EMULATOR_COMPUTE_NODE"] = "1"
    os.execvp(argv[2], argv[2:])


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
    elif verb == "kill-group":
        time.sleep(0.2)
        _kill_group(int(rest[0]))
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
