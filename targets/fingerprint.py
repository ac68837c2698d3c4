"""Content digests for cache keys: the code of whole packages (globbed, never a hand-kept file list, which goes stale
the day a module is added) and single files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_digest(*roots: str | Path) -> str:
    """sha256 over every ``*.py`` under each root (a package folder or one file), by relative path and bytes."""
    h = hashlib.sha256()
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        for p in files:
            h.update(f"{p.relative_to(root.parent) if root.is_dir() else p.name}\0".encode())
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
