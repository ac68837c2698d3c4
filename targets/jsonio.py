"""Writes that never leave half a file at the final path, and JSON that is JSON (no NaN, no Infinity).

``json.dumps`` writes bare ``NaN`` by default, which strict parsers (jq, JavaScript, PostgreSQL's json type) reject,
so a run's summary would look fine to Python and be broken for everyone else. Every write goes through
``strict_dumps`` (``allow_nan=False``); a non-finite value becomes one ConfigError naming the record and the key path
of the value, never a traceback and never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from targets.errors import ConfigError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written file at the final path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def nonfinite_path(obj: Any, path: str = "") -> str | None:
    """The key path (``artifacts[0].metric.value``) of the first NaN/Inf float in ``obj``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "(top level)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = nonfinite_path(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = nonfinite_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def strict_dumps(obj: Any, what: str, **kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False, **kwargs)``; a NaN/Inf is a ConfigError naming ``what`` and the key."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        where = nonfinite_path(obj)
        if where is None:
            raise
        raise ConfigError(f"{what}: {where} is not a finite number (NaN or Infinity cannot be written as JSON)",
                          hint="find what produced it (a metric, a measurement) and make it return a finite "
                               "number") from None


def write_json(path: str | os.PathLike[str], obj: Any, what: str | None = None, **kwargs: Any) -> None:
    """Strict JSON to ``path`` through a temporary file (indent 2 unless given): nothing half-written."""
    kwargs.setdefault("indent", 2)
    atomic_write_bytes(path, (strict_dumps(obj, what or str(path), **kwargs) + "\n").encode())


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A folder written in full under a temporary name next to ``final`` and then renamed over it (replacing an older
    entry), so a Ctrl-C or a full disk never leaves a half entry that looks finished; on failure nothing is left."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
