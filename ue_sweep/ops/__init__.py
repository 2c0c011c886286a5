"""Operating a submitted sweep from the login node: its job table, the scheduler's view of its
jobs, ``ue-sweep status`` and ``ue-sweep cancel``.

The launchers write the job table (``SWEEP_DIR/jobs.json``) when they submit; everything here
reads it together with each job's ``result.json`` and ``progress.json``, so a sweep can be
followed and cancelled from any shell, whether its submitting process waits or has returned.
"""
