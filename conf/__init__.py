"""Hydra configs of ue-sweep, packaged as ``ue_sweep.conf`` (see pyproject.toml)."""
