"""Evaluations of a protected dataset: the pluggable stages after the noise.

One module (``victims.py``) or sub-package (``defenses/``, ``membership/``, ...) per evaluation,
each defining ``EVALUATION`` (in ``evaluation.py`` for a sub-package); ``registry.py`` finds them.
"""
