"""``edgepipe verify BUNDLE``: is this release bundle exactly what ``edgepipe release`` wrote, and who signed it?

Checked on the receiving side, before anything is deployed, without writing a byte to disk: first the tar index
alone (every name canonical and inside one top folder, no duplicates however spelled -- ``top/./x``, ``top//x`` --,
regular files only, no setuid/setgid/sticky bits, each size equal to the manifest's, the total under a cap), then
every file is hashed as it streams out of the archive and compared with ``manifest.json`` and ``SHA256SUMS``, and the
Ed25519 signature over ``manifest.json`` is checked (against ``--pubkey`` when given). Nothing is extracted.

The signed archive must be the whole file: one gzip member holding one tar, with nothing but the tar's zero padding
after its last entry and not a byte after the gzip stream. Otherwise ``tar -i`` (which reads on past the end marker)
or a tool that reads concatenated gzip members could unpack a second, unsigned archive glued after the signed one.
Every model file must belong to an artifact of the manifest, and every file of an artifact must have the sha256 the
run measured for it (``file_sha256``; the main file's ``sha256`` in bundles made before it existed).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.release.signing import SIGNATURE, check_signature
from targets.errors import ConfigError

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
META_MAX = 16 << 20  # manifest, sums and signature are read into memory: bounded
DEFAULT_MAX_BYTES = 4 << 30
TAIL_MAX = 1 << 20  # zero padding after the tar's end marker (tarfile pads to 10 KiB): more is not ours


def max_bundle_bytes() -> int:
    raw = os.environ.get("EDGEPIPE_VERIFY_MAX_BYTES", "")
    return int(raw) if raw.isdigit() else DEFAULT_MAX_BYTES


# ------------------------------------------------------------------------------------------------------ index
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
    if m.mode & 0o7000:
        return f"mode {m.mode:o} sets setuid/setgid/sticky bits; a bundle holds plain 0644 files"
    if posixpath.normpath(name) != name.rstrip("/") or "\\" in name or "\n" in name:
        return "non-canonical name (./, //, a backslash or a newline): another entry may spell the same path"
    return None


def _index_problems(members: list[tarfile.TarInfo]) -> tuple[list[str], str | None, dict[str, tarfile.TarInfo]]:
    problems: list[str] = []
    tops: set[str] = set()
    seen: set[str] = set()
    files: dict[str, tarfile.TarInfo] = {}
    for m in members:
        canon = posixpath.normpath(m.name.replace("\\", "/"))
        if canon in seen:  # extraction keeps the last copy, a listing shows the first: never both
            problems.append(f"{m.name}: appears more than once in the archive")
        seen.add(canon)
        problem = _member_problem(m)
        if problem:
            problems.append(f"{m.name}: {problem}")
            continue
        parts = PurePosixPath(m.name).parts
        tops.add(parts[0])
        if m.isreg():
            if len(parts) < 2:
                problems.append(f"{m.name}: a file outside the bundle's folder")
                continue
            files["/".join(parts[1:])] = m
    if len(tops) != 1:
        problems.append(f"expected one top folder, found {sorted(tops) or 'none'}")
        return problems, None, files
    return problems, tops.pop(), files


def _read_small(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(m)
    return fh.read(META_MAX + 1) if fh is not None else b""


def _hash(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    fh = tar.extractfile(m)
    if fh is not None:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _trailing_problems(path: Path, tar_end: int) -> list[str]:
    """Anything after the signed archive: a second gzip member, raw bytes after the gzip stream, or non-zero data
    after the tar's last entry. Reads the file once, decompressing; nothing is kept."""
    d = zlib.decompressobj(wbits=31)  # gzip, exactly one member
    pos = 0
    with open(path, "rb") as fh:
        while not d.eof:
            chunk = fh.read(1 << 20)
            if not chunk:
                return ["the gzip stream is truncated (no end)"]
            data = d.decompress(chunk)
            if pos + len(data) > tar_end:
                tail = data[max(0, tar_end - pos):]
                if tail.translate(None, b"\0"):
                    return [f"data after the end of the signed archive (at byte {tar_end} of the tar): another "
                            "archive may be hidden there; `tar -i` would unpack it"]
                if pos + len(data) - tar_end > TAIL_MAX:
                    return [f"more than {TAIL_MAX} bytes of padding after the end of the signed archive"]
            pos += len(data)
        extra = d.unused_data + fh.read(1)
    if extra:
        return ["bytes after the end of the gzip stream (a second archive appended?); the signed archive must be "
                "the whole file"]
    return []


# ------------------------------------------------------------------------------------------------------ verify
def verify_bundle(path: str | Path, trusted: list[bytes] | None = None) -> list[str]:
    """Every problem with a bundle (empty list: intact and signed). Writes nothing to disk."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        with tarfile.open(path, "r:gz") as tar:
            problems, top, files = _index_problems(tar.getmembers())
            problems += _trailing_problems(path, tar.offset)
            if top is None:
                return problems
            return problems + _check_members(tar, top, files, trusted, bool(problems))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return [f"not a readable .tar.gz ({type(exc).__name__}: {exc})"]


def _check_members(tar: tarfile.TarFile, top: str, files: dict[str, tarfile.TarInfo], trusted: list[bytes] | None,
                   index_failed: bool) -> list[str]:
    problems: list[str] = []
    if MANIFEST not in files:
        return [f"{top}/{MANIFEST}: missing, nothing can be checked"]
    for meta in (MANIFEST, SUMS, SIGNATURE):
        if meta in files and files[meta].size > META_MAX:
            return [f"{top}/{meta}: {files[meta].size} bytes, more than a manifest ever holds ({META_MAX})"]
    manifest_bytes = _read_small(tar, files[MANIFEST])
    try:
        manifest = json.loads(manifest_bytes)
        listed = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict)}
        if not isinstance(manifest.get("pick", {}), dict) or not isinstance(manifest.get("artifacts", []), list):
            raise TypeError("pick must be an object and artifacts a list")
        if not all(isinstance(a, dict) for a in manifest.get("artifacts") or []):
            raise TypeError("every artifact must be an object")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return [f"{top}/{MANIFEST}: unreadable ({type(exc).__name__}: {str(exc)[:120]})"]
    present = set(files)
    reported: set[str] = set()
    for rel in sorted(present - set(listed) - {MANIFEST, SUMS, SIGNATURE}):
        problems.append(f"{top}/{rel}: added (not listed in {MANIFEST})")
        reported.add(rel)
    for rel in sorted(set(listed) - present):
        problems.append(f"{top}/{rel}: removed (listed in {MANIFEST} but not in the bundle)")
        reported.add(rel)
    total = 0
    for rel in sorted(set(listed) & present):
        size = files[rel].size
        total += size
        if size != listed[rel].get("bytes"):
            problems.append(f"{top}/{rel}: size {size} differs from {listed[rel].get('bytes')} in {MANIFEST}")
            reported.add(rel)
    if total > max_bundle_bytes():
        problems.append(f"{top}: the files add up to {total} bytes, over the cap of {max_bundle_bytes()} "
                        "(EDGEPIPE_VERIFY_MAX_BYTES)")
    if problems or index_failed:  # the index is wrong: nothing is read beyond the manifest
        return problems
    digests = {rel: _hash(tar, files[rel]) for rel in sorted(present - {SIGNATURE})}
    for rel in sorted(set(listed) & present):
        if digests[rel] != listed[rel].get("sha256"):
            problems.append(f"{top}/{rel}: changed (sha256 {digests[rel][:16]}..., {MANIFEST} says "
                            f"{str(listed[rel].get('sha256'))[:16]}...)")
            reported.add(rel)
    owned: set[str] = set()
    for art in manifest.get("artifacts") or []:  # the model files the card and the pick point at
        art_files = art.get("files") if isinstance(art.get("files"), list) else []
        measured = art.get("file_sha256") if isinstance(art.get("file_sha256"), dict) else None
        for rel in art_files:
            if not isinstance(rel, str) or rel not in listed:
                problems.append(f"{top}/{MANIFEST}: artifact {art.get('name')} names {rel}, which is not in its files")
                continue
            owned.add(rel)
            if measured is None or rel == art.get("path"):  # the main file is checked below (as always)
                continue
            if rel not in measured:
                problems.append(f"{top}/{rel}: artifact {art.get('name')} records no measured sha256 for it")
            elif listed[rel].get("sha256") != measured[rel]:
                problems.append(f"{top}/{rel}: differs from the file the run measured (sha256 "
                                f"{str(measured[rel])[:16]}...)")
        main = art.get("path")
        if isinstance(main, str):
            owned.add(main)
        if main in listed and main in present and art.get("sha256") and listed[main].get("sha256") != art["sha256"]:
            problems.append(f"{top}/{main}: differs from the artifact the run measured "
                            f"(sha256 {art['sha256'][:16]}...)")
    for rel in sorted(r for r in present if r.startswith("models/") and r not in owned):
        problems.append(f"{top}/{rel}: a model file that belongs to no artifact of {MANIFEST}")
    if (manifest.get("pick") or {}).get("overall") not in {a.get("name") for a in manifest.get("artifacts") or []}:
        problems.append(f"{top}/{MANIFEST}: the pick names no artifact of the bundle")
    problems += _check_sums(tar, top, files, digests, reported)
    if SIGNATURE not in files:
        problems.append(f"{top}/{SIGNATURE}: missing: the bundle is not signed")
    else:
        try:
            record = json.loads(_read_small(tar, files[SIGNATURE]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        problems += [f"{top}/{p}" for p in check_signature(manifest_bytes, record, trusted)]
    return problems


def _check_sums(tar: tarfile.TarFile, top: str, files: dict[str, tarfile.TarInfo], digests: dict[str, str],
                reported: set[str]) -> list[str]:
    if SUMS not in files:
        return [f"{top}/{SUMS}: removed (every bundle has one)"]
    problems: list[str] = []
    text = _read_small(tar, files[SUMS]).decode(errors="replace")
    pairs = [line.split("  ", 1) for line in text.splitlines() if "  " in line]
    sums = {rel: digest for digest, rel in pairs if rel != SIGNATURE}
    for rel in sorted(set(sums) | (set(files) - {SUMS, SIGNATURE})):
        if rel in reported:
            continue
        if rel not in sums:
            problems.append(f"{top}/{rel}: not listed in {SUMS}")
        elif rel not in files:
            problems.append(f"{top}/{rel}: listed in {SUMS} but not in the bundle")
        elif sums[rel] != digests.get(rel):
            problems.append(f"{top}/{rel}: changed (differs from {SUMS})")
    return problems


def check_bundle(path: str | Path, trusted: list[bytes] | None = None) -> dict[str, Any]:
    """The manifest of an intact bundle; a ConfigError (exit 2) listing every problem otherwise."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file", hint="give the .tar.gz that `edgepipe release` wrote")
    problems = verify_bundle(path, trusted)
    if problems:
        n = len(problems)
        raise ConfigError(f"{path}: bundle failed verification ({n} problem{'s' if n > 1 else ''})", problems=problems,
                          hint="do not deploy it; rebuild it with `edgepipe release` from the run folder")
    with tarfile.open(path, "r:gz") as tar:
        _, top, files = _index_problems(tar.getmembers())
        manifest = json.loads(_read_small(tar, files[MANIFEST]))
        sig = json.loads(_read_small(tar, files[SIGNATURE]))
    manifest["_signature"] = {"key_id": sig.get("key_id"), "trusted": trusted is not None}
    return manifest
