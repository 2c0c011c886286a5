"""Entry points: the ``ue-sweep`` Hydra app and its sub-commands, ``ue-sweep-data``, and the
checks a command line passes before anything is computed (preflight, validation)."""
