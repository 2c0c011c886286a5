"""Hydra launchers of ue-sweep: in-process, submitit local, SLURM and LSF.

Each skips jobs that already completed with the same configuration, waits for every job (a
failed one does not stop or lose the others) and ends with a sweep summary. The submitit
launchers also turn a preempted job into submitit's checkpoint-and-requeue.
"""
