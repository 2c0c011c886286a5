"""Checkpoint-and-stop when the scheduler warns that a job is about to be preempted or time out.

SLURM (``--signal=USR2@90``, set by submitit) and LSF (``bsub -wa USR2 -wt``) send a signal ahead
of the kill. Its handler only raises a flag: the training loops look at the flag after every step,
agree on it across ranks, write a consistent checkpoint and raise :class:`Preempted`. Whoever
started the job then requeues it (the submitit launchers call submitit's own handler, which
requeues through the scheduler), and the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ue_sweep.runtime.distributed import Runtime

Handler = Callable[[int, FrameType | None], Any] | int | None
T = TypeVar("T")


class Preempted(BaseException):  # a BaseException like KeyboardInterrupt: not an error
    """The job stopped at a checkpoint because the scheduler asked it to; requeue it."""


class _State:
    requested = False
    signum: int | None = None
    previous: Handler = None


class Interrupted(BaseException):
    """SIGTERM outside a scheduler (``kill``, a closed session): the job records ``interrupted``."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """Let SIGTERM end the job as :class:`Interrupted`, not leave its result ``running``.

    Only where nothing else owns the signal: a scheduler's or torchrun's ranks keep theirs.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def preemption_signal() -> int:
    """USR2 unless submitit's SUBMITIT_PREEMPT_SIGNAL names another."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return int(getattr(signal, f"SIG{name}"))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _State.requested = True


def install() -> None:
    """Route the preemption signal to the flag, remembering the handler it replaces."""
    if threading.current_thread() is not threading.main_thread():
        return
    signum = preemption_signal()
    previous = signal.signal(signum, _on_signal)
    if previous is not _on_signal:
        _State.signum, _State.previous = signum, previous
    _State.requested = False


def request() -> None:
    """Ask the running job to checkpoint and stop (what the signal handler does)."""
    _State.requested = True


def requested(rt: Runtime) -> bool:
    """Whether any rank was asked to stop; every rank must call this at the same steps."""
    if rt.world_size == 1:
        return _State.requested
    import torch  # here, not at import: the command line catches these exceptions
    import torch.distributed as dist

    flag = torch.tensor([int(_State.requested)], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def previous_handler() -> tuple[int | None, Handler]:
    """The handler :func:`install` replaced (submitit's requeue handler in a submitit job)."""
    return _State.signum, _State.previous


def preemptible(
    batches: Iterator[T], first_step: int, rt: Runtime, save: Callable[[int], None]
) -> Iterator[T]:
    """Yield the batches of one epoch; after each, stop at a checkpoint if preemption was asked.

    ``save(next_step)`` writes the checkpoint that resumes at ``next_step`` of this epoch.
    """
    for step, batch in enumerate(batches, start=first_step):
        yield batch
        if requested(rt):
            save(step + 1)
            raise Preempted(f"checkpointed at step {step + 1}; requeue to resume")
