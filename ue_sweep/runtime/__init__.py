"""The machinery every rank runs on: process groups, preemption, seeding, progress, loggers and
the result record."""
