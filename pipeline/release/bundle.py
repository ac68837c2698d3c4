"""Run folder -> reproducible release bundle per device, and ``verify`` for the receiving end.

A bundle is ``dist/<recipe>-<device>-<version>.tar.gz`` holding one folder of the same name:

    manifest.json     every other file with SHA-256 and size, lineage, tool versions, the pick, the gate's verdict
    SHA256SUMS        the same checksums (plus manifest.json) for ``sha256sum -c``
    MODEL_CARD.md     what it is, data, stage trail, accuracy and latency on the device with its environment, limits
    example.py        load and call the picked model with the runner (stdlib + numpy + runtime)
    bench.py          the on-device runner (targets/runner/bench.py)
    models/<family>/  the chosen artifact of each backend family (OpenVINO: .xml + .bin)
    bench/<name>.json the runner's full record for each chosen artifact
    summary.json, recipe.yaml   the run's record and the recipe as run

Chosen: per backend family the device supports, the fastest usable artifact that meets the gate (valid, measured;
lowest p90, then bytes; rundir.PICK_RULE); the overall pick is the fastest of those. Version: ``--version``, else the
summary's ``version``, else the run id without its leading ``<recipe>-`` (the run's timestamp). Reproducible: entries
sorted, uid/gid 0, no owner names, mode 0644, mtime ``SOURCE_DATE_EPOCH`` or the run's finish time, gzip with mtime 0
and no file name; so the same run folder always gives the same bytes.

Nothing but regular, single-link files really inside the run folder is packed (``targets.safe_files``: a symlink
or a hard link is refused), every file of a chosen artifact must still have the sha256 the run recorded for it
(summary.json's ``files``; OpenVINO's ``.bin`` and ONNX external data too, not only the main file), and each file
is hashed from the same open file it is packed from, so the manifest's digests are of the bytes in the bundle.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from pipeline.release.modelcard import example_py, model_card
from pipeline.release.signing import SIGNATURE, sign_manifest
from pipeline.release.verify import MANIFEST, SUMS, check_bundle, verify_bundle
from pipeline.results.gate import artifact_verdicts, evaluate_gate
from pipeline.results.rundir import (
    PICK_RULE,
    artifact_files,
    artifact_name,
    candidates,
    find_run_dirs,
    load_summary,
    metric_info,
    parse_time,
    recipe_file,
)
from targets import CAPABILITIES, parse_backend
from targets.errors import ConfigError, GateError
from targets.jsonio import strict_dumps
from targets.runner import RUNNER_PATH
from targets.safe_files import UnsafeFileError, open_regular, sha256_regular

__all__ = ["build_bundle", "check_bundle", "choose", "default_version", "verify_bundle"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20


def _clean(text: str) -> str:
    return _SAFE.sub("_", str(text)).strip("._") or "x"


MAX_EPOCH = 253402300799   # 9999-12-31T23:59:59Z: tar, gzip and datetime all hold it


def _epoch(summary: dict[str, Any]) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        if not env.isdigit() or int(env) > MAX_EPOCH:
            raise ConfigError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds up to {MAX_EPOCH} "
                              "(the year 9999)", hint="e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)")
        return int(env)
    when = parse_time(summary.get("finished")) or parse_time(summary.get("started"))
    return int(when.timestamp()) if when else 0


def _gate_block(run_dir: Path, summary: dict[str, Any], device: str) -> dict[str, Any]:
    """The verdict judged now from the summary's figures, never the stored one alone: the limits are the recipe's
    ``gate:`` as run (else the limits stored with the verdict). A stored pass the figures do not bear out fails."""
    from pipeline.recipe.config import Gate

    raw: Any = None
    found = recipe_file(run_dir)
    if found is not None:
        try:
            loaded = yaml.safe_load(found.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{found}: not readable YAML ({str(exc).splitlines()[0][:160]})",
                              hint="re-run the pipeline to rewrite it") from None
        raw = loaded.get("gate") if isinstance(loaded, dict) else None
    stored = summary.get("gate") if isinstance(summary.get("gate"), dict) else {}
    if raw is None:
        raw = {k: stored[k] for k in ("max_accuracy_drop", "max_latency_ms", "max_bytes") if stored.get(k) is not None}
        if isinstance(stored.get("max_metric_drop"), str):   # a relative limit ("5%") has no accuracy alias
            raw["max_metric_drop"] = stored["max_metric_drop"]
    try:
        limits = Gate.model_validate(raw or {})
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError; shown in one line
        raise ConfigError(f"{run_dir}: the gate limits are not valid ({str(exc).splitlines()[0]})") from None
    return evaluate_gate(summary, limits, device)


def default_version(summary: dict[str, Any]) -> str:
    """The run id without the recipe-name prefix the orchestrator puts first (``digits-20261123-162151`` ->
    ``20261123-162151``), so the bundle is not called ``digits-local-digits-...``."""
    run_id, prefix = str(summary["run_id"]), f"{summary['recipe']}-"
    return run_id[len(prefix):] if run_id.startswith(prefix) and len(run_id) > len(prefix) else run_id


def _input_shape(run_dir: Path) -> list[int] | None:
    """The model's input shape from the recipe as run (for the model card and whoever feeds the model)."""
    found = recipe_file(run_dir)
    try:
        shape = ((yaml.safe_load(found.read_text()) or {}).get("model") or {}).get("input_shape") if found else None
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return shape if isinstance(shape, list) else None


def _inputs(run_dir: Path) -> list[dict[str, Any]] | None:
    """Every model input (name, shape, dtype) from the recipe as run; the ``input_shape`` shorthand is one float32
    input named "input"."""
    found = recipe_file(run_dir)
    try:
        model = ((yaml.safe_load(found.read_text()) or {}).get("model") or {}) if found else {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    specs = model.get("inputs") if isinstance(model, dict) else None
    if isinstance(specs, list) and all(isinstance(i, dict) for i in specs):
        return [{"name": i.get("name"), "shape": i.get("shape"), "dtype": i.get("dtype", "float32")} for i in specs]
    shape = _input_shape(run_dir)
    return [{"name": "input", "shape": shape, "dtype": "float32"}] if shape else None


def _batch_axes(run_dir: Path) -> list[int] | None:
    """Each output's batch axis as the run used it (``inputs/eval.npz``'s ``__batch_axes__``; None = all 0)."""
    import numpy as np

    path = run_dir / "inputs" / "eval.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return [int(a) for a in data["__batch_axes__"]] if "__batch_axes__" in data.files else None
    except (OSError, ValueError):
        return None


def _supported(device: str, present: set[str]) -> set[str]:
    """Backend families the device profile lists; all present families when the profile is not at hand."""
    from targets.profiles import load_profile

    try:
        profile = load_profile(device)
    except Exception:  # noqa: BLE001 - a lab's own profile may be elsewhere; the run only holds what it measured
        return present
    return {parse_backend(b)[0] for b in profile.backends} or present


def choose(summary: dict[str, Any], device: str, verdicts: dict[str, dict[str, Any]] | None = None
           ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The best artifact per supported family by the release's pick rule (rundir.PICK_RULE), best first, and
    {family: name}."""
    arts = summary.get("artifacts") or []
    pool, key = candidates([a for a in arts if a.get("backend") in CAPABILITIES
                            and a.get("precision") in CAPABILITIES[a["backend"]]["precisions"]], verdicts)
    families = _supported(device, {a["backend"] for a in pool})   # names become bundle paths
    chosen: dict[str, dict[str, Any]] = {}
    for art in sorted(pool, key=key):
        if art["backend"] in families and art["backend"] not in chosen:
            chosen[art["backend"]] = art
    ranked = sorted(chosen.values(), key=key)
    return ranked, {fam: artifact_name(a) for fam, a in sorted(chosen.items())}


# ------------------------------------------------------------------------------------------------------ build
def _recorded_hashes(run_dir: Path, art: dict[str, Any], main: Path) -> dict[str, str]:
    """{file name: sha256} the run recorded for an artifact: summary.json's ``files``, else (a summary written
    before it) the sidecar's ``file_sha256``; the main file's is always the summary's ``sha256``."""
    recorded = art.get("files") if isinstance(art.get("files"), dict) else None
    if recorded is None:
        sidecar = Path(str(main) + ".json")
        try:
            record = json.loads(sidecar.read_text()) if sidecar.is_file() and not sidecar.is_symlink() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = {}
        recorded = record.get("file_sha256") if isinstance(record, dict) else None
    hashes = {str(k): str(v) for k, v in (recorded or {}).items()}
    hashes[main.name] = art["sha256"]
    return hashes


def _inside_run(run_dir: Path, art: dict[str, Any]) -> list[Path]:
    """The artifact's files, each a regular single-link file really inside the run folder, each with the sha256
    the run recorded for it and all of them with its total size. summary.json can be edited by anyone: it names,
    it does not vouch."""
    name = artifact_name(art)
    if not isinstance(art.get("file"), str) or not isinstance(art.get("sha256"), str):
        raise ConfigError(f"{run_dir}: {name}: summary.json gives no file or sha256 for it",
                          hint="re-run the pipeline; a release only packs files the run measured")
    root = run_dir.resolve()
    files = artifact_files(run_dir, art)
    folder = files[0].parent
    if not folder.resolve().is_relative_to(root) or files[0].is_symlink():
        raise ConfigError(f"{run_dir}: {name}: {art['file']} is outside the run folder (or a link)",
                          hint="a release only packs files the run wrote inside its folder")
    missing = [str(f) for f in files if not f.is_file() and not f.is_symlink()]
    if missing:
        raise ConfigError(f"{run_dir}: {name}: file(s) missing: {', '.join(missing)}",
                          hint="the run folder is incomplete; re-run the pipeline")
    recorded = _recorded_hashes(run_dir, art, files[0])
    total = 0
    for f in files:
        with open_regular(f, folder, what="pack") as fh:  # a link (sym or hard) is refused here
            total += os.fstat(fh.fileno()).st_size
        want = recorded.get(f.name)
        if want is None:
            raise ConfigError(f"{f}: summary.json records no sha256 for this file of {name}",
                              hint="re-run the pipeline (runs before per-file hashes recorded only the main file)")
        got = sha256_regular(f, folder, what="pack")
        if got != want:
            raise ConfigError(f"{f}: checksum differs from summary.json ({want[:12]}...)",
                              hint="the artifact changed after the run; re-run the pipeline instead of editing it")
    if isinstance(art.get("bytes"), int) and art["bytes"] != total:
        raise ConfigError(f"{run_dir}: {name}: its files hold {total} bytes, summary.json says {art['bytes']}",
                          hint="the artifact changed after the run; re-run the pipeline")
    return files


def build_bundle(run_dir: str | Path, device: str | None = None, dist: str | Path = "dist",
                 version: str | None = None, allow_failed_gate: bool = False, key: str | Path | None = None) -> Path:
    """Write ``dist/<recipe>-<device>-<version>.tar.gz`` from a finished run folder and return its path."""
    found = find_run_dirs(run_dir, device)
    if len(found) > 1:
        raise ConfigError(f"{run_dir}: a fleet run with devices {', '.join(p.name for p in found)}",
                          hint="say which one with --device NAME")
    run_dir = found[0]
    summary = load_summary(run_dir)
    run_device = str(summary["device"])
    if device is not None and device != run_device and Path(device).stem != run_device:
        raise ConfigError(f"{run_dir}: this run was measured on device {run_device!r}, not {device!r}",
                          hint=f"release it with --device {run_device}, or run the recipe on {device} first")
    if summary.get("status") == "incomplete":
        raise ConfigError(f"{run_dir}: the run did not finish (status incomplete)", hint="run it again to completion")
    gate = _gate_block(run_dir, summary, run_device)
    if not gate["passed"] and not allow_failed_gate:
        failures = gate.get("failures") or ["the gate failed"]
        raise GateError(f"{run_dir}: cannot release, the quality gate failed: " + "; ".join(failures),
                        hint="fix the model or the recipe's gate, or pass --allow-failed-gate "
                             "(recorded in the manifest)")
    verdicts = artifact_verdicts({**summary, "gate": gate})
    chosen, per_family = choose(summary, run_device, verdicts)
    if not chosen:
        raise ConfigError(f"{run_dir}: no valid, measured artifact to release on {run_device}",
                          hint="see the report: every artifact failed, was invalid or is unsupported by the device")
    ver = _clean(version or summary.get("version") or default_version(summary))
    name = f"{_clean(summary['recipe'])}-{_clean(run_device)}-{ver}"
    sources: dict[str, Path | bytes] = {"bench.py": RUNNER_PATH}
    roots: dict[str, Path] = {}  # arc name -> the folder its file must really be in
    manifest_artifacts = []
    for art in chosen:
        files = _inside_run(run_dir, art)
        folder = f"models/{art['backend']}"
        file_sha256 = {}
        for f in files:
            sources[f"{folder}/{f.name}"] = f
            roots[f"{folder}/{f.name}"] = f.parent
            file_sha256[f"{folder}/{f.name}"] = _recorded_hashes(run_dir, art, files[0])[f.name]
        bench_file = run_dir / "bench" / f"{artifact_name(art)}.json"
        sources[f"bench/{artifact_name(art)}.json"] = (
            bench_file if bench_file.is_file()
            else (strict_dumps(art.get("bench") or {}, "bench record", indent=2) + "\n").encode())
        sidecar = Path(str(files[0]) + ".json")
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        manifest_artifacts.append({
            "name": artifact_name(art), "backend": art["backend"], "precision": art["precision"],
            "path": f"{folder}/{files[0].name}", "files": [f"{folder}/{f.name}" for f in files],
            "sha256": art.get("sha256"), "file_sha256": file_sha256, "bytes": art.get("bytes"),
            "accuracy": art.get("accuracy"),
            "metric": art.get("metric"),
            "latency_ms": art.get("latency_ms"), "valid": art.get("valid"), "gate": verdicts.get(artifact_name(art)),
            "runtime": (art.get("bench") or {}).get("runtime"), "validation": art.get("validation"),
            "lineage": {"parent": art.get("parent", record.get("parent")), "produced_by": record.get("produced_by"),
                        "config": record.get("config"), "source_file": art["file"]}})
    sources["summary.json"] = run_dir / "summary.json"
    if recipe_file(run_dir) is not None:
        sources["recipe.yaml"] = recipe_file(run_dir)
    top = manifest_artifacts[0]
    runtime = CAPABILITIES[top["backend"]]["runtime"]
    sources["example.py"] = example_py(top["path"], top["backend"], runtime, metric_info(summary)["name"],
                                       _batch_axes(run_dir)).encode()
    mtime = _epoch(summary)
    manifest: dict[str, Any] = {
        "schema": 1, "name": _clean(summary["recipe"]), "device": run_device, "version": ver, "bundle": name,
        "run_id": summary["run_id"],
        "created": datetime.fromtimestamp(mtime, timezone.utc).isoformat(), "source_date_epoch": mtime,
        "input_shape": _input_shape(run_dir), "inputs": _inputs(run_dir),
        "edgepipe_version": summary.get("edgepipe_version"),
        "tool_versions": summary.get("tool_versions") or {},
        "pick": {"overall": top["name"], "per_family": per_family,
                 "rule": PICK_RULE},
        "artifacts": manifest_artifacts,
        "lineage": {"original": summary.get("baseline") or {}, "stages": summary.get("stages") or [],
                    "artifacts": {a["name"]: a["lineage"] for a in manifest_artifacts}},
        "gate": {**gate, "allow_failed_gate": bool(allow_failed_gate),
                 "released_despite_failure": bool(allow_failed_gate and not gate["passed"])},
    }
    sources["MODEL_CARD.md"] = model_card(summary, manifest, chosen).encode()
    for arc, src in sources.items():
        if isinstance(src, Path) and arc not in roots:
            roots[arc] = run_dir if src.parent.resolve().is_relative_to(run_dir.resolve()) else src.parent
    digests = {arc: _digest(src, roots.get(arc)) for arc, src in sources.items()}
    manifest["files"] = [{"path": arc, "sha256": d, "bytes": n} for arc, (d, n) in sorted(digests.items())]
    manifest_bytes = (strict_dumps(manifest, "manifest.json", indent=2, sort_keys=True) + "\n").encode()
    sources[MANIFEST] = manifest_bytes
    digests[MANIFEST] = _digest(manifest_bytes)
    sources[SUMS] = "".join(f"{d}  {arc}\n" for arc, (d, _) in sorted(digests.items())).encode()
    signature, _ = sign_manifest(manifest_bytes, Path(key).expanduser() if key else None)
    sources[SIGNATURE] = (strict_dumps(signature, SIGNATURE, indent=2, sort_keys=True) + "\n").encode()
    dest = Path(dist) / f"{name}.tar.gz"
    _write_tar(dest, {f"{name}/{arc}": src for arc, src in sources.items()}, mtime,
               {f"{name}/{arc}": (roots.get(arc), digests[arc]) for arc, src in sources.items()
                if isinstance(src, Path)})
    return dest


def _digest(src: Path | bytes, root: Path | None = None) -> tuple[str, int]:
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest(), len(src)
    with open_regular(src, root, what="pack") as fh:
        digest, n = hashlib.sha256(), 0
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
            n += len(block)
    return digest.hexdigest(), n


class _Hashing:
    """A reader that hashes what tarfile takes from it: the bytes packed are checked against the manifest."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.digest, self.n = fh, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        block = self.fh.read(size)
        self.digest.update(block)
        self.n += len(block)
        return block


def _write_tar(dest: Path, entries: dict[str, Path | bytes], mtime: int,
               checks: dict[str, tuple[Path | None, tuple[str, int]]] | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for arcname in sorted(entries):
                    src = entries[arcname]
                    info = tarfile.TarInfo(arcname)
                    info.type, info.mode, info.mtime = tarfile.REGTYPE, 0o644, mtime
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if isinstance(src, bytes):
                        info.size = len(src)
                        tar.addfile(info, io.BytesIO(src))
                    else:
                        root, (want, size) = (checks or {}).get(arcname, (None, ("", -1)))
                        with open_regular(src, root, what="pack") as fh:
                            info.size = os.fstat(fh.fileno()).st_size
                            reader = _Hashing(fh)
                            tar.addfile(info, reader)
                            if checks is not None and (reader.n != size or reader.digest.hexdigest() != want
                                                       or fh.read(1)):
                                raise UnsafeFileError(f"{src}: changed while it was being packed",
                                                      hint="run `edgepipe release` again when nothing writes to "
                                                           "the run folder")
            raw.flush()
            os.fsync(raw.fileno())
        tmp.chmod(0o644)  # mkstemp makes it private; a release is meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------------ CLI
