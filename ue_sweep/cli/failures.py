"""A job that the machine failed (a full disk, a killed rank) ends in one line that says how to
go on; the traceback goes to the job's log file, not the terminal.

The job's checkpoints survive such an end, so the line names the command that resumes it: the
same command line, with the run directory pinned for a single run (whose default names the time).
"""

from __future__ import annotations

import os
import shlex
import traceback
from collections.abc import Sequence
from pathlib import Path

from ue_sweep.errors import MachineError
from ue_sweep.store.sweep import SWEEP_NAME_ENV, plain_override, sweep_name


def resume_command(argv: Sequence[str], job_dir: Path, multirun: bool) -> str:
    """The ``ue-sweep`` command line that finds this job's checkpoints again."""
    args = [plain_override(a) for a in argv]
    prefix = ""
    if multirun:
        name = os.environ.get(SWEEP_NAME_ENV)
        if name and name != sweep_name(args):
            prefix = f"{SWEEP_NAME_ENV}={shlex.quote(name)} "
    elif not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={job_dir}")
    return f"{prefix}ue-sweep {shlex.join(args)}"


def one_line(err: MachineError, log_file: Path, resume: str) -> MachineError:
    """Append ``err``'s traceback to the job's log; return the line for the terminal."""
    try:
        with log_file.open("a") as log:
            log.write("".join(traceback.format_exception(err)))
        where = f"traceback in {log_file}"
    except OSError as write_err:
        where = f"traceback not saved ({write_err.strerror})"
    return MachineError(f"{err}; {where}; resume with: {resume}")
