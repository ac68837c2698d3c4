"""The flow is one-way: targets/ never imports pipeline/, and only targets/ssh.py imports paramiko."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_targets_never_imports_pipeline():
    offenders = [str(p) for p in (ROOT / "targets").rglob("*.py") if "pipeline" in _imports(p)]
    assert offenders == []


def test_only_targets_ssh_imports_paramiko():
    sources = [*(ROOT / "targets").rglob("*.py"), *(ROOT / "pipeline").rglob("*.py")]
    users = sorted(str(p.relative_to(ROOT)) for p in sources if "paramiko" in _imports(p))
    assert users in ([], ["targets/ssh.py"])
