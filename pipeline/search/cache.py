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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import targets
from pipeline.phases.outcome import ExportOutcome
from pipeline.ui.console import say_on_console
from targets.artifact import Artifact
from targets.device import record_problems
from targets.errors import ConfigError
from targets.jsonio import staged_dir, strict_dumps, write_json


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
    """A changed exporter, checker, runner (all of targets/) or export phase must not hit an old export."""
    from targets.fingerprint import code_digest

    return code_digest(Path(targets.__file__).parent, Path(__file__).parent.parent / "phases")


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


def entry_problems(entry: Any, rules: dict[str, Any] | None) -> list[str]:
    """What is wrong with a cached measurement: a bench entry's runner record, or an interleaved comparison."""
    if not isinstance(entry, dict):
        return ["not a JSON object"]
    if "bench" in entry:
        return record_problems(entry["bench"], rules)
    if "p90_ms" in entry:
        series = entry["p90_ms"]
        ok = isinstance(series, dict) and all(isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e7 for x in v)
            for v in series.values())
        return [] if ok else ["p90_ms is not a list of positive figures per contestant"]
    return ["neither a runner record nor a comparison"]


def _discard(path: Path, why: str, warn: Callable[[str], None] | None = None) -> None:
    """A malformed cache entry (truncated, edited, tampered, from another version) is removed with one warning, so
    it is recomputed (or measured again) instead of crashing the search or being believed."""
    line = (f"cache entry {path} is unreadable or invalid ({why.splitlines()[0][:200] if why else '?'}); "
            "discarded, computing it again")
    if warn is not None:
        warn(line)
    else:
        say_on_console(f"edgepipe: warning: {line}")
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class MeasurementCache:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "measurements"

    def key(self, sha256: str, fingerprint: dict[str, Any], what: str = "bench",
            metric: dict[str, Any] | None = None) -> str:
        """A measurement is keyed by the artifact, the board and its rules, and the metric that scored its outputs
        (name, direction and the source of a user metric): a switch of ``task.metric`` never reuses a figure."""
        return digest({"what": what, "sha256": sha256, "fingerprint": fingerprint, "metric": metric})[:32]

    def get(self, key: str, rules: dict[str, Any] | None = None,
            warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """The cached entry, re-checked with the runner's own validity rules (``rules``: the profile's bench
        section); a malformed or tampered entry is discarded with a one-line warning, so it is measured again."""
        path = self.dir / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        else:
            problems = entry_problems(entry, rules)
        if problems:
            _discard(path, "; ".join(problems), warn)
            return None
        return entry

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_json(self.dir / f"{key}.json", record)


class ExportCache:
    """``exports/<key>/<backend>/``: the artifact's files, its sidecar and ``outcome.json`` (check results)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "exports"

    def key(self, model_key: str, recipe_name: str, overrides: dict[str, Any], arch: str | None,
            eval_fp: str, metric: dict[str, Any] | None = None) -> str:
        """An export is checked with the task metric, so its identity is part of the key with the exporters' code."""
        return digest({"model": model_key, "name": recipe_name, "overrides": overrides, "arch": arch,
                       "eval": eval_fp, "metric": metric, "code": exporter_code_version()})[:24]

    def get(self, key: str, backend: str) -> ExportOutcome | None:
        folder = self.dir / key / backend
        try:
            outcome = ExportOutcome.from_json(json.loads((folder / "outcome.json").read_text()))
            if outcome.artifact is not None:
                art = outcome.artifact
                # the record names files where they were written; they live in this folder now
                files = [str(folder / Path(f).name) for f in art.files or [art.path]]
                outcome.artifact = Artifact.from_dict({**art.to_dict(), "path": str(folder / Path(art.path).name),
                                                       "files": files})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _discard(folder, f"{type(exc).__name__}: {exc}")
            return None
        art = outcome.artifact
        if art is not None and not all(Path(f).is_file() for f in art.files or [art.path]):
            return None
        return outcome

    def put(self, key: str, backend: str, entry: ExportOutcome) -> ExportOutcome:
        """Move the artifact's files into the cache and return the outcome pointing at them."""
        parent = self.dir / key
        with staged_dir(parent / backend) as tmp:
            outcome = entry.to_json()
            art = entry.artifact
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
        got = self.get(key, backend)
        if got is None:
            raise OSError(f"{parent / backend}: the export cache entry just written cannot be read back")
        return got
