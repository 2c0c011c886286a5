"""The validation layer: registry-owned choices, and the hook for groups of per-name dataclasses."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, is_dataclass

import pytest

from ue_sweep.cli import validation
from ue_sweep.config import Registry, RootConfig, setting
from ue_sweep.errors import ConfigError


@dataclass
class Probe:
    """Stands in for a per-evaluation dataclass of ``ue_sweep/evals/<name>.py``."""

    rounds: int = setting(1, ge=1)
    arch: str = setting("small_cnn", one_of=Registry("archs"))


def test_every_registry_named_by_the_schema_is_known():
    named = set()
    stack: list[type] = [RootConfig]
    while stack:
        for f in fields(stack.pop()):
            if isinstance(rule := f.metadata.get("one_of"), Registry):
                named.add(rule.name)
            if f.default_factory is not MISSING and is_dataclass(child := f.default_factory()):
                stack.append(type(child))
    assert named == set(validation.REGISTRIES)
    assert "digits" in validation.registry_names("datasets")
    assert validation.registry_names("loggers") == ("none", "wandb")


def test_a_group_of_per_name_dataclasses_plugs_into_validation(monkeypatch):
    checked = []
    group = validation.Group(
        schemas=lambda: {"probe": Probe},
        check=lambda key, entry, cfg: checked.append((key, entry.rounds, cfg.seed)),
    )
    monkeypatch.setitem(validation.GROUPS, "probes", group)

    keys = validation.schema_keys()
    assert keys["probes.probe"] == "Probe" and keys["probes.probe.rounds"] == "int"
    assert keys["dataset.name"] == "str"  # the schema's own keys stay

    entries = validation.group_entries("probes", {"probe": {"rounds": 3}})
    assert entries == {"probe": Probe(rounds=3)}
    with pytest.raises(ConfigError, match=r"probes='nope' is not accepted; expected one of: probe"):
        validation.group_entries("probes", {"nope": {}})

    cfg = RootConfig()
    cfg.probes = entries  # the group's RootConfig field, a dict of name -> entry
    validation.validate(cfg, on_this_host=False)
    assert checked == [("probes.probe", 3, 0)]
    cfg.probes = {"probe": Probe(arch="vgg")}
    with pytest.raises(ConfigError, match=r"probes.probe.arch='vgg' .* one of: small_cnn"):
        validation.validate(cfg, on_this_host=False)
