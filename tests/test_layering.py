"""The flow is one-way, and this table is its picture: which package may import which (DESIGN §2).

Read from ``ast`` (lazy imports inside functions count too). A new arrow that is not in the table fails, as does a
cycle between modules or a private name imported from another module. targets/ never imports pipeline/, and only
targets/ssh.py imports paramiko.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> the packages it may import. Reading down the table is reading the flow: lower rows never import upper.
ALLOWED: dict[str, set[str]] = {
    "pipeline.cli": {"pipeline", "pipeline.run", "pipeline.search", "pipeline.release", "pipeline.results",
                     "pipeline.phases", "pipeline.recipe", "pipeline.stages", "pipeline.ui", "targets"},
    "pipeline.run": {"pipeline", "pipeline.phases", "pipeline.results", "pipeline.recipe", "pipeline.stages",
                     "pipeline.ui", "targets"},
    "pipeline.search": {"pipeline", "pipeline.phases", "pipeline.results", "pipeline.recipe", "pipeline.stages",
                        "pipeline.ui", "targets"},
    "pipeline.release": {"pipeline.results", "pipeline.recipe", "targets"},
    "pipeline.phases": {"pipeline.recipe", "pipeline.stages", "pipeline.ui", "targets"},
    "pipeline.results": {"pipeline.recipe", "targets"},
    "pipeline.recipe": {"pipeline.stages", "targets"},
    "pipeline.stages": {"targets"},
    "pipeline.ui": {"targets"},
    "pipeline": set(),
    "targets": set(),
}
#: module cycles that are allowed: the transport opens its SSH half lazily, and the SSH half is a transport.
ALLOWED_CYCLES = [{"targets.transport", "targets.ssh"}]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """``pipeline.X`` for a subpackage's module, the module itself for pipeline/cli.py and run.py, ``targets``."""
    parts = module.split(".")
    if parts[0] == "targets":
        return "targets"
    if parts[0] != "pipeline":
        return None
    if len(parts) == 1:
        return "pipeline"
    return ".".join(parts[:2])


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: they never run, so they cannot close a cycle."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports_of(path: Path, runtime_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in the file, inside functions too (``runtime_only``: without the
    ``TYPE_CHECKING`` ones)."""
    out = []
    tree = ast.parse(path.read_text())
    skip = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def sources(root: Path = ROOT) -> dict[str, Path]:
    return {_module_name(p): p for d in ("pipeline", "targets") for p in (root / d).rglob("*.py")}


def arrows(mods: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(importer package, imported package, where) for every import that crosses a package."""
    out = []
    for mod, path in mods.items():
        src = package_of(mod)
        for target, _ in imports_of(path):
            dst = package_of(target)
            if dst is not None and dst != src:
                out.append((src, dst, f"{path.name} ({mod}) imports {target}"))
    return out


def violations(mods: dict[str, Path]) -> list[str]:
    return [f"{where}: {src} -> {dst} is not in the layering table" for src, dst, where in arrows(mods)
            if dst not in ALLOWED.get(src, set())]


def module_cycles(mods: dict[str, Path]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for target, names in imports_of(path, runtime_only=True):
            for cand in [target, *(f"{target}.{n}" for n in names)]:
                if cand in mods and cand != mod:
                    graph[mod].add(cand)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(mods):
        if node not in state:
            visit(node, [node])
    return [c for c in cycles if set(c) not in ALLOWED_CYCLES]


def test_every_import_between_packages_is_in_the_layering_table() -> None:
    assert violations(sources()) == []


def test_the_table_itself_is_a_one_way_flow() -> None:
    """No package may import a package that may import it back."""
    back = [(a, b) for a, deps in ALLOWED.items() for b in deps if a in ALLOWED.get(b, set())]
    assert back == []


def test_no_module_import_cycle() -> None:
    assert module_cycles(sources()) == []


def test_no_private_name_is_imported_from_another_module() -> None:
    leaks = [f"{path.relative_to(ROOT)}: from {target} import {', '.join(n for n in names if n.startswith('_'))}"
             for mod, path in sources().items() for target, names in imports_of(path)
             if target.split(".")[0] in ("pipeline", "targets") and target != mod
             and any(n.startswith("_") and n != "__version__" for n in names)]
    assert leaks == []


@pytest.mark.parametrize(("where", "line", "expected"), [
    ("pipeline/stages/_probe.py", "from pipeline.results.gate import apply_gate\n",
     "pipeline.stages -> pipeline.results is not in the layering table"),
    ("targets/_probe.py", "import pipeline.run\n", "targets -> pipeline.run is not in the layering table"),
    ("pipeline/recipe/_probe.py", "def f():\n    from pipeline.search.engine import search\n",
     "pipeline.recipe -> pipeline.search is not in the layering table"),
])
def test_a_deliberately_added_upward_import_fails_the_table(tmp_path: Path, where: str, line: str,
                                                            expected: str) -> None:
    probe = tmp_path / where
    probe.parent.mkdir(parents=True)
    probe.write_text(line)
    mods = {**sources(), _module_name(probe, tmp_path): probe}
    assert violations(sources()) == []
    assert any(expected in v for v in violations(mods))


def test_a_deliberately_added_cycle_is_found(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import pipeline.results.store\n")
    b.write_text("from pipeline.results.history import history\n")
    mods = {"pipeline.results.history": a, "pipeline.results.store": b}
    assert module_cycles(mods) == [["pipeline.results.history", "pipeline.results.store",
                                    "pipeline.results.history"]]


def test_targets_never_imports_pipeline() -> None:
    offenders = [str(p) for p in (ROOT / "targets").rglob("*.py")
                 if any(t.split(".")[0] == "pipeline" for t, _ in imports_of(p))]
    assert offenders == []


def test_only_targets_ssh_imports_paramiko() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in sources().values()
                   if any(t.split(".")[0] == "paramiko" for t, _ in imports_of(p)))
    assert users in ([], ["targets/ssh.py"])


def test_every_package_folder_ships_in_the_wheel() -> None:
    """pyproject lists the packages (device_profiles/ is mapped into targets/); a new folder must be listed."""
    tomllib = pytest.importorskip("tomllib")

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for d in ("pipeline", "targets")
               for p in (ROOT / d).rglob("__init__.py")}
    assert folders - listed == set()
