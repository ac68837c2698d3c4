"""``edgepipe verify BUNDLE``: is this release bundle exactly what ``edgepipe release`` wrote?

Checked on the receiving side, before anything is deployed: every file against ``manifest.json`` and ``SHA256SUMS``,
nothing added or removed, the artifacts the manifest points at. Entries that could write outside the folder
(absolute paths, ``..``, links) or create special files are refused by name before extraction, and the rest is
extracted with tarfile's ``data`` filter into a temporary folder, so a hostile archive cannot touch the host.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from targets.artifact import sha256_file
from targets.errors import ConfigError

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


# ------------------------------------------------------------------------------------------------------ verify
def _member_problem(m: tarfile.TarInfo) -> str | None:
    name = m.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path (an archive must only hold paths inside its folder)"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path traversal ('..' would write outside the folder)"
    if m.issym() or m.islnk():
        kind = "symbolic" if m.issym() else "hard"
        target = PurePosixPath(m.linkname)
        resolved = os.path.normpath(str(PurePosixPath(name).parent / target))
        if target.is_absolute() or resolved.startswith(".."):
            return f"{kind} link pointing outside the bundle (-> {m.linkname})"
        return f"{kind} link (-> {m.linkname}); a bundle holds regular files only"
    if m.isdev():
        return "device or FIFO entry; a bundle holds regular files only"
    if not (m.isreg() or m.isdir()):
        return f"unsupported entry type {m.type!r}"
    return None


def verify_bundle(path: str | Path) -> list[str]:
    """Every problem with a bundle (empty list: intact). Never extracts anything unsafe."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    problems: list[str] = []
    try:
        with tarfile.open(path, "r:gz") as tar, tempfile.TemporaryDirectory(prefix="edgepipe-verify-") as tmp:
            members = tar.getmembers()
            safe = []
            tops = set()
            seen: set[str] = set()
            for m in members:
                if m.name in seen:  # extraction keeps the last copy, a listing shows the first: never both
                    problems.append(f"{m.name}: appears more than once in the archive")
                seen.add(m.name)
                problem = _member_problem(m)
                if problem:
                    problems.append(f"{m.name}: {problem}")
                    continue
                tops.add(PurePosixPath(m.name).parts[0])
                if m.isreg():
                    safe.append(m)
            if len(tops) != 1:
                problems.append(f"expected one top folder, found {sorted(tops) or 'none'}")
                return problems
            top = tops.pop()
            try:
                tar.extractall(tmp, members=safe, filter="data")
            except tarfile.FilterError as exc:
                return [*problems, f"unsafe entry refused: {exc}"]
            problems += _check_tree(Path(tmp) / top, top)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        problems.append(f"not a readable .tar.gz ({type(exc).__name__}: {exc})")
    return problems


def _check_tree(root: Path, top: str) -> list[str]:
    problems: list[str] = []
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    if MANIFEST not in present:
        return [f"{top}/{MANIFEST}: missing, nothing can be checked"]
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        listed = {f["path"]: f for f in manifest["files"]}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return [f"{top}/{MANIFEST}: unreadable ({exc})"]
    reported = set()
    for rel in sorted(present - set(listed) - {MANIFEST, SUMS}):
        problems.append(f"{top}/{rel}: added (not listed in {MANIFEST})")
        reported.add(rel)
    for rel in sorted(set(listed) - present):
        problems.append(f"{top}/{rel}: removed (listed in {MANIFEST} but not in the bundle)")
        reported.add(rel)
    for rel in sorted(set(listed) & present):
        actual = sha256_file(root / rel)
        if actual != listed[rel].get("sha256"):
            problems.append(f"{top}/{rel}: changed (sha256 {actual[:16]}..., {MANIFEST} says "
                            f"{str(listed[rel].get('sha256'))[:16]}...)")
            reported.add(rel)
        elif (root / rel).stat().st_size != listed[rel].get("bytes"):
            problems.append(f"{top}/{rel}: size {(root / rel).stat().st_size} differs from {listed[rel].get('bytes')}")
            reported.add(rel)
    for art in manifest.get("artifacts") or []:  # the model files the card and the pick point at
        for rel in art.get("files") or []:
            if rel not in listed:
                problems.append(f"{top}/{MANIFEST}: artifact {art.get('name')} names {rel}, which is not in its files")
        main = art.get("path")
        if main in listed and main in present and art.get("sha256") and listed[main].get("sha256") != art["sha256"]:
            problems.append(f"{top}/{main}: differs from the artifact the run measured "
                            f"(sha256 {art['sha256'][:16]}...)")
    if (manifest.get("pick") or {}).get("overall") not in {a.get("name") for a in manifest.get("artifacts") or []}:
        problems.append(f"{top}/{MANIFEST}: the pick names no artifact of the bundle")
    if SUMS not in present:
        problems.append(f"{top}/{SUMS}: removed (every bundle has one)")
        return problems
    pairs = [line.split("  ", 1) for line in (root / SUMS).read_text().splitlines() if "  " in line]
    sums = {rel: digest for digest, rel in pairs}
    for rel in sorted(set(sums) | (present - {SUMS})):
        if rel in reported:
            continue
        if rel not in sums:
            problems.append(f"{top}/{rel}: not listed in {SUMS}")
        elif rel not in present:
            problems.append(f"{top}/{rel}: listed in {SUMS} but not in the bundle")
        elif sums[rel] != sha256_file(root / rel):
            problems.append(f"{top}/{rel}: changed (differs from {SUMS})")
    return problems


def check_bundle(path: str | Path) -> dict[str, Any]:
    """The manifest of an intact bundle; a ConfigError (exit 2) listing every problem otherwise."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file", hint="give the .tar.gz that `edgepipe release` wrote")
    problems = verify_bundle(path)
    if problems:
        n = len(problems)
        raise ConfigError(f"{path}: bundle failed verification ({n} problem{'s' if n > 1 else ''})", problems=problems,
                          hint="do not deploy it; rebuild it with `edgepipe release` from the run folder")
    with tarfile.open(path, "r:gz") as tar:
        top = PurePosixPath(tar.getmembers()[0].name).parts[0]
        fh = tar.extractfile(f"{top}/{MANIFEST}")
        assert fh is not None
        return json.loads(fh.read())
