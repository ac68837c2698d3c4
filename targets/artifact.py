"""The record every exported file travels with: what it is, how it was made, and from what.

Between pipeline steps only files and these JSON records move, so an artifact can be benchmarked, validated or
released in another process (or on another machine) knowing only its sidecar ``<file>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from targets.jsonio import write_json


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Artifact:
    """One exported model file plus the lineage that produced it (Olive's footprint idea, one record per file).

    ``path`` is the file a runtime opens; ``files`` lists every file that belongs to it (OpenVINO's .xml and .bin),
    all in the same folder. ``bytes`` is their total size. ``sha256`` is the main file's; ``file_sha256`` maps the
    name of every file (main one included) to its sha256 when it was made, so a companion swapped later for one of
    the same size (a ``.bin`` with other weights) is caught before it is sent or packed. Records written before it
    existed load with it empty (only the main file is then checked).
    """

    path: str
    backend: str
    precision: str
    sha256: str
    bytes: int
    parent: str | None = None
    produced_by: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def from_files(cls, path: str | os.PathLike[str], *, backend: str, precision: str,
                   extra_files: list[str | os.PathLike[str]] | tuple = (), parent: str | None = None,
                   produced_by: str = "", config: dict[str, Any] | None = None,
                   metadata: dict[str, Any] | None = None) -> Artifact:
        main = Path(path)
        files = [main, *[Path(p) for p in extra_files]]
        hashes = {f.name: sha256_file(f) for f in files}
        return cls(
            path=str(main), backend=backend, precision=precision, sha256=hashes[main.name],
            bytes=sum(f.stat().st_size for f in files), parent=parent, produced_by=produced_by,
            config=dict(config or {}), files=[str(f) for f in files], metadata=dict(metadata or {}),
            file_sha256=hashes,
        )

    def expected_sha256(self, file: str | os.PathLike[str]) -> str | None:
        """The sha256 recorded for one of this artifact's files (by name), None when none was recorded."""
        name = Path(file).name
        if name == Path(self.path).name:
            return self.sha256 or self.file_sha256.get(name)
        return self.file_sha256.get(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not isinstance(known.get("file_sha256", {}), dict):
            known["file_sha256"] = {}
        return cls(**known)

    def sidecar(self) -> Path:
        return Path(self.path + ".json")

    def save(self) -> Path:
        write_json(self.sidecar(), self.to_dict())
        return self.sidecar()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Artifact:
        """Load from the artifact file or its sidecar; a bare file with no sidecar gets a record guessed from it."""
        p = Path(path)
        side = p if p.suffix == ".json" else Path(str(p) + ".json")
        if side.exists():
            return cls.from_dict(json.loads(side.read_text()))
        from targets import backend_for_file

        backend = backend_for_file(p)
        extra = [p.with_suffix(".bin")] if backend == "openvino" and p.with_suffix(".bin").exists() else []
        return cls.from_files(p, backend=backend, precision="unknown", extra_files=extra, produced_by="file")
