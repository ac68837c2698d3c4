"""Only targets/ssh.py may import paramiko (an optional extra); everything else reaches SSH through the transport."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_only_ssh_module_imports_paramiko():
    pattern = re.compile(r"^\s*(import paramiko|from paramiko\b)", re.MULTILINE)
    offenders = sorted(str(p.relative_to(ROOT)) for folder in ("targets", "pipeline") if (ROOT / folder).is_dir()
                       for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text()))
    assert offenders == ["targets/ssh.py"]
