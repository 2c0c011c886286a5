"""What outlives a process: the artifact store and its keys, running checkpoints, a sweep's
bookkeeping."""
