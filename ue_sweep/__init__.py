"""ue-sweep: Unlearnable Clusters with DDP, swept over batch sizes on SLURM and LSF."""
