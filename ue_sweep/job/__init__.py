"""One job: its ranks, its result record, and the pipeline of stages it runs."""
