"""submitit backend for IBM Spectrum LSF: multi-task jobs whose tasks all run the callable.

``bsub`` (script on stdin, job arrays), ``bjobs -o`` polling, ``bkill``, ``brequeue``, and a task
launcher (``jsrun`` resource sets, Open MPI's ``mpirun``, or ``blaunch``) that starts every task
with its own rank, so multi-node DDP works. Registered through submitit's ``submitit`` entry-point
group; ``submitit.AutoExecutor(cluster="lsf")`` selects it.
"""

from submitit_lsf.environment import LSFJobEnvironment
from submitit_lsf.executor import LSFExecutor, LSFInfoWatcher, LSFJob

__all__ = ["LSFExecutor", "LSFInfoWatcher", "LSFJob", "LSFJobEnvironment"]
