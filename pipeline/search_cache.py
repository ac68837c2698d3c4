"""The caches a search shares across candidates, re-runs and searches: stages, exports, measurements.

One root (``--cache DIR``, else ``$EDGEPIPE_CACHE``, else ``~/.cache/edgepipe``) holds

* ``stages/<stage>/<key>/``    the stage cache of ``pipeline/stages/cache.py``, keyed by the hash of the stage inputs;
* ``exports/<key>/<backend>/`` an exported, checked artifact, keyed by the model it came from (the last stage's
  key), the export settings, the target CPU and the code of the exporters;
* ``measurements/<key>.json``  the runner's record, keyed by (artifact sha256, device fingerprint, runtime versions,
  bench rules), so a re-run or a second search measures nothing it already has.

Every entry is written to a temporary name and renamed into place: a Ctrl-C never leaves a half entry that looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import targets
from targets.artifact import Artifact
from targets.errors import ConfigError
from targets.jsonio import strict_dumps, write_json

_TARGET_CODE = ("__init__.py", "_export_common.py", "export_config.py", "export_onnx.py", "export_openvino.py",
                "export_tflite.py", "validate.py", "runner/bench.py")


def cache_root(given: str | Path | None = None) -> Path:
    """The cache folder, created; one that is a file (``EDGEPIPE_CACHE=/dev/null``) or cannot be created is a
    ConfigError naming where it came from, not a traceback at the first write."""
    env = os.environ.get("EDGEPIPE_CACHE")
    if given:
        root, where = Path(given).expanduser(), f"--cache {given}"
    elif env:
        root, where = Path(env).expanduser(), f"EDGEPIPE_CACHE={env}"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepipe"
        where = f"the cache folder {root}"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where}: {root} is not a folder", hint="point it at a folder (or one to create)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create {root}: {exc.strerror}",
                          hint="point it at a writable folder") from None
    return root


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def exporter_code_version() -> str:
    """A changed exporter, checker or runner must not hit an old export."""
    here = Path(targets.__file__).parent
    h = hashlib.sha256()
    for name in _TARGET_CODE:
        p = here / name
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def device_fingerprint(profile: Any, probe: dict[str, Any]) -> dict[str, Any]:
    """What makes two measurements comparable: the board (where, which CPU and OS), how the runner was told to run,
    and the runtimes it found there. Temperature and load are not part of it: they are recorded with each figure."""
    env = probe.get("environment") or {}
    c = profile.connection
    return {"device": {"name": profile.name, "transport": c.transport, "host": c.host, "port": c.port,
                       "user": c.user, "arch": profile.arch, "python": profile.python,
                       "machine": env.get("machine"), "os": env.get("os"), "cpus": env.get("cpus"),
                       "device_python": env.get("python"), "numpy": env.get("numpy")},
            "runtime": profile.runtime.model_dump(mode="json"), "bench": profile.bench.model_dump(mode="json"),
            "runtimes": probe.get("runtimes") or {}}


def _discard(path: Path, why: str) -> None:
    """A malformed cache entry (truncated, edited, from another version) is removed with one warning, so it is
    recomputed instead of crashing the search with a traceback."""
    print(f"edgepipe: warning: cache entry {path} is unreadable ({why.splitlines()[0][:160] if why else '?'}); "
          "discarded, computing it again", file=sys.stderr)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return None


def _well_formed(record: Any) -> bool:
    """The two shapes a measurement is cached in: a runner record with its score, or interleaved p90 rounds."""
    if not isinstance(record, dict):
        return False
    if "bench" in record:
        bench = record["bench"]
        return isinstance(bench, dict) and isinstance(bench.get("latency_ms"), dict) \
            and isinstance(record.get("scored", {}), dict)
    rounds = record.get("p90_ms")
    return isinstance(rounds, dict) and all(
        isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        for v in rounds.values())


class MeasurementCache:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "measurements"

    def key(self, sha256: str, fingerprint: dict[str, Any], what: str = "bench") -> str:
        return digest({"what": what, "sha256": sha256, "fingerprint": fingerprint})[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.dir / f"{key}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _discard(path, f"{type(exc).__name__}: {exc}")
        if not _well_formed(record):
            return _discard(path, "not a measurement record")
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_json(self.dir / f"{key}.json", record)


class ExportCache:
    """``exports/<key>/<backend>/``: the artifact's files, its sidecar and ``outcome.json`` (check results)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "exports"

    def key(self, model_key: str, recipe_name: str, overrides: dict[str, Any], arch: str | None,
            eval_fp: str) -> str:
        return digest({"model": model_key, "name": recipe_name, "overrides": overrides, "arch": arch,
                       "eval": eval_fp, "code": exporter_code_version()})[:24]

    def get(self, key: str, backend: str) -> dict[str, Any] | None:
        folder = self.dir / key / backend
        try:
            outcome = json.loads((folder / "outcome.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _discard(folder, f"{type(exc).__name__}: {exc}")
        if not isinstance(outcome, dict):
            return _discard(folder, "outcome.json is not a mapping")
        entry = dict(outcome)
        if "artifact" in outcome:
            try:
                art = Artifact.from_dict(outcome["artifact"])
                # the record names files where they were written; they live in this folder now
                files = [str(folder / Path(f).name) for f in art.files or [art.path]]
                entry["artifact"] = Artifact.from_dict({**art.to_dict(), "path": str(folder / Path(art.path).name),
                                                        "files": files})
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                return _discard(folder, f"its artifact record is malformed ({type(exc).__name__}: {exc})")
            if not all(Path(f).is_file() for f in files):
                return None
        return entry

    def put(self, key: str, backend: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Move the artifact's files into the cache and return the entry pointing at them."""
        parent = self.dir / key
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{backend}-", dir=parent))
        try:
            outcome = {k: v for k, v in entry.items() if k != "artifact"}
            art: Artifact | None = entry.get("artifact")
            if art is not None:
                files = []
                for f in art.files or [art.path]:
                    shutil.copy2(f, tmp / Path(f).name)
                    files.append(str(tmp / Path(f).name))
                moved = Artifact.from_dict({**art.to_dict(), "path": str(tmp / Path(art.path).name), "files": files})
                moved.save()
                outcome["artifact"] = moved.to_dict()
            (tmp / "outcome.json").write_text(strict_dumps(outcome, f"export cache {key}/{backend}", indent=1,
                                                           default=str))
            final = parent / backend
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        got = self.get(key, backend)
        assert got is not None
        return got
