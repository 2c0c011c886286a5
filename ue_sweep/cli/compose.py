"""What every entry point sets up before Hydra composes a config: the schema, the resolvers,
the launchers (only where the command line can reach them), and numeric config-group choices
(``batch_size=256``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

from omegaconf import OmegaConf

from ue_sweep.cli.validation import register_schemas
from ue_sweep.runtime.env import env_from_launcher


@cache
def numeric_groups() -> frozenset[str]:
    """Config groups whose option names are numbers (``batch_size``, ``clusters``)."""
    conf = resources.files("ue_sweep.conf")
    return frozenset(
        group.name
        for group in conf.iterdir()
        if group.is_dir()
        and (
            stems := [
                f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml")
            ]
        )
        and all(stem.isdigit() for stem in stems)
    )


def quote_numeric_choices(args: Sequence[str]) -> list[str]:
    """Let ``batch_size=256`` and ``-m clusters=5,10`` pick numeric config-group options.

    Hydra's override parser reads ``256`` as an integer and refuses it as a group choice; the
    documented workaround is quoting (``batch_size='"256"'``), which this does for the user.
    """
    pattern = re.compile(r"^(?P<group>[\w/]+)=(?P<values>\d+(?:,\d+)*)$")
    out = []
    for arg in args:
        match = pattern.match(arg)
        if match and match["group"] in numeric_groups():
            values = ",".join(f'"{v}"' for v in match["values"].split(","))
            arg = f"{match['group']}={values}"
        out.append(arg)
    return out


def launcher_rank() -> int:
    env = env_from_launcher()
    return env.rank if env is not None else 0


def _register_resolvers() -> None:
    # `eps: ${div:16,255}` reads like the papers write it.
    OmegaConf.register_new_resolver("div", lambda a, b: a / b, replace=True)
    # Ranks started by an external launcher share one Hydra run directory politely.
    OmegaConf.register_new_resolver(
        "ue_sweep.rank_zero_only",
        lambda value: value if launcher_rank() == 0 else None,
        replace=True,
    )
    OmegaConf.register_new_resolver(
        "ue_sweep.rank_suffix",
        lambda: "" if launcher_rank() == 0 else f".rank{launcher_rank()}",
        replace=True,
    )
    # A world size on any launcher preset: `nodes: ${ue_sweep.nodes_for:48,${.tasks_per_node}}`.
    OmegaConf.register_new_resolver("ue_sweep.nodes_for", nodes_for, replace=True)


def nodes_for(world_size: int, tasks_per_node: int) -> int:
    """The nodes that give ``world_size`` ranks at ``tasks_per_node``; refused if none does."""
    if tasks_per_node < 1 or world_size % tasks_per_node:
        raise ValueError(
            f"a world size of {world_size} is not a whole number of nodes of {tasks_per_node} "
            "tasks: set hydra.launcher.nodes and tasks_per_node yourself"
        )
    return world_size // tasks_per_node


# Hydra flags and keys after which the composed config may name a launcher without an
# override saying so (`hydra.mode=MULTIRUN` makes a run a multirun).
_LAUNCHER_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--info", "-i", "--hydra-help", "hydra.mode")
_OWN_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def needs_launchers(argv: Sequence[str]) -> bool:
    """Whether composing ``ue-sweep ARGV`` may meet ue-sweep's launcher configs.

    A single run never starts a launcher, and its config names one only through an override
    (``hydra/launcher=...``, ``hydra.launcher.*``) or a preset (``experiment=...``); a refused
    typo or ``--help`` then answers without importing the launchers (a third of its start-up).
    """
    return any(
        arg.split("=", 1)[0].lstrip("+~") in (*_LAUNCHER_FLAGS, *_OWN_CONFIG_FLAGS)
        or "launcher" in arg
        or "experiment" in arg
        for arg in argv
    )


@cache
def register_launchers() -> None:
    """Make ue-sweep's launchers known to Hydra (once per process).

    Hydra finds plugins by scanning the ``hydra_plugins`` namespace package, which misses editable
    installs; registering the classes explicitly works for every kind of install. The configs
    are stored again once Hydra's own are in place (see ``register``).
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.ue_sweep_launchers.config import register as store_launcher_configs
    from hydra_plugins.ue_sweep_launchers.launchers import LAUNCHERS

    plugins = Plugins.instance()
    for launcher in LAUNCHERS:
        plugins.register(launcher)
    store_launcher_configs()


@cache
def register_app() -> None:
    """Make the schema and the resolvers known to Hydra (once per process)."""
    register_schemas()
    _register_resolvers()


def register(argv: Sequence[str] | None = None) -> None:
    """Make the schema, the resolvers and, unless ``argv`` is a single run that cannot name
    one, the launchers known to Hydra.

    Every entry point calls this before composing a config; importing this module does not.
    """
    register_app()
    if argv is None or needs_launchers(argv):
        register_launchers()
