"""submitit backend for IBM Spectrum LSF: multi-task jobs whose tasks all run the callable.

``bsub`` (script on stdin, job arrays), ``bjobs -o`` polling with ``bhist`` and the job report as
fallbacks, ``bkill``, ``brequeue`` from the job shell, and a task launcher (``blaunch`` on plain
LSF, ``jsrun`` resource sets under IBM CSM, or Open MPI's ``mpirun``) that starts every task with
its own rank, so multi-node DDP works. Registered through submitit's ``submitit`` entry-point
group; ``submitit.AutoExecutor(cluster="lsf")`` selects it.
"""

from submitit_lsf.environment import LSFJobEnvironment
from submitit_lsf.executor import LSFExecutor, LSFJob
from submitit_lsf.watcher import LSFInfoWatcher

__all__ = ["LSFExecutor", "LSFInfoWatcher", "LSFJob", "LSFJobEnvironment"]
