"""The import graph reads one way: stages and evaluations above, schema and utilities below.

Built from the source with ``ast``, so a lazy import inside a function counts as an edge like a
module-level one (it is as much a dependency, only later); imports under ``if TYPE_CHECKING:``
are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (directory that is on sys.path, top-level packages in it)
ROOTS = ((REPO, ("ue_sweep", "submitit_lsf", "hydra_plugins")),)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (source file, whether it is a package's ``__init__``)."""
    modules = {}
    for base, packages in ROOTS:
        for package in packages:
            for path in sorted((base / package).rglob("*.py")):
                parts = list(path.relative_to(base).with_suffix("").parts)
                is_package = parts[-1] == "__init__"
                modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.Module, package: str) -> set[str]:
    """Every name an import in ``tree`` may load: modules, and ``from X import y`` as ``X.y``."""
    names: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if _is_type_checking(node):
            todo.extend(node.orelse)  # the `else:` of `if TYPE_CHECKING` does run
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = str(node.module)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at module level or inside a function)."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        imported = _imported(ast.parse(path.read_text(), str(path)), package)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_relative_and_type_checking_imports(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\nfrom . import b\nfrom .c import d\n"
        "if TYPE_CHECKING:\n    import pkg.e\nelse:\n    import pkg.f\n"
        "def g():\n    from pkg.h import i\n"
    )
    assert _imported(ast.parse(source), "pkg") == {
        "typing",
        "typing.TYPE_CHECKING",
        "pkg",
        "pkg.b",
        "pkg.c",
        "pkg.c.d",
        "pkg.f",
        "pkg.h",
        "pkg.h.i",
    }
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_there_is_no_import_cycle():
    graph = import_graph()
    assert "ue_sweep.config" in graph and "submitit_lsf.executor" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_schema_imports_nothing_of_ue_sweep_but_its_errors():
    # Registries import the schema for their types; the schema names their choices
    # (config.Registry) and ue_sweep.cli.validation asks them.
    imported = {m for m in import_graph()["ue_sweep.config"] if m != "ue_sweep"}
    assert imported <= {"ue_sweep.errors"}, sorted(imported)


# Folders are layers, top to bottom; a module imports only from its own layer or those below.
LAYERS = (
    ("entry points", ("ue_sweep.__main__", "ue_sweep.cli", "hydra_plugins")),
    ("sweep operations", ("ue_sweep.ops",)),
    ("one job", ("ue_sweep.job",)),
    ("evaluations", ("ue_sweep.evals",)),
    ("unlearnable clusters", ("ue_sweep.uc",)),
    ("training", ("ue_sweep.train",)),
    ("data and models", ("ue_sweep.data", "ue_sweep.models")),
    ("presentation", ("ue_sweep.report",)),
    ("storage", ("ue_sweep.store",)),
    ("runtime", ("ue_sweep.runtime",)),
    ("schema", ("ue_sweep.config", "ue_sweep.errors")),
    ("standalone LSF backend", ("submitit_lsf",)),
)


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in import_graph() if m != "ue_sweep" and layer_of(m) is None]
    assert not unplaced, unplaced


def test_no_import_runs_back_up_the_layers():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for module, deps in sorted(import_graph().items())
        if layer_of(module) is not None
        for dep in sorted(deps)
        if layer_of(dep) is not None and layer_of(dep) < layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("ue_sweep.evals.victims.config") < layer_of("ue_sweep.uc.noise")
    assert layer_of("ue_sweep.cli.main") == 0 and layer_of("submitit_lsf.script") == 11


def test_the_lsf_backend_imports_nothing_of_ue_sweep():
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("submitit_lsf"):
            assert all(d.startswith("submitit_lsf") for d in deps), (module, deps)


# A refused command line, --help and the sub-commands' help answer without these.
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "wandb", "medmnist", "opacus")

_CHECK_PATH = """
import sys
from ue_sweep.cli import main
from ue_sweep.cli.compose import register
from ue_sweep.cli.preflight import check_command_line
from ue_sweep.errors import UserError

register(["batch_size.per_device=-1"])
try:
    check_command_line(["batch_size.per_device=-1"])
except UserError:
    pass
else:
    raise SystemExit("the command line was not refused")
print("launchers:" + str("hydra_plugins.ue_sweep_launchers.launchers" in sys.modules))
for sub in ("status", "cancel", "report"):
    sys.argv = ["ue-sweep", sub, "--help"]
    try:
        main.main()
    except SystemExit:
        pass
print("heavy:" + ",".join(m for m in {heavy} if m in sys.modules))
"""


def test_the_command_lines_check_path_imports_no_heavy_library(tmp_path):
    import subprocess
    import sys

    # Run outside the checkout, as the installed `ue-sweep` runs: with the checkout on sys.path,
    # Hydra's plugin scan imports every launcher itself.
    out = subprocess.run(
        [sys.executable, "-c", _CHECK_PATH.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "heavy:", out.stdout[-300:]
    assert "launchers:False" in lines, "a single run's typo answers without the launchers"
