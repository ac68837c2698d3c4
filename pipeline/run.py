"""The orchestrator: the only module that knows the whole chain (DESIGN §1).

Host phase, once: recipe -> model + data -> stages -> export every backend -> check each artifact against its parent.
Device phase, per device (concurrently for a fleet): benchmark every artifact the device wants -> summary.json.
A backend that fails is recorded and the others go on; the run exits non-zero at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

import pipeline
from pipeline.config import Recipe, load_recipe
from pipeline.gate import apply_gate
from pipeline.model import accuracy, arrays, complexity, load_data, load_model, predict
from pipeline.progress import Progress
from pipeline.rundir import now_iso
from pipeline.stages import StagesResult, run_stages
from pipeline.stages.qat_export import openvino_from_qdq_onnx
from pipeline.store import Store, open_store
from targets import get_exporter, parse_backend
from targets.artifact import Artifact, atomic_write_json
from targets.device import benchmark
from targets.errors import DeviceError, EdgeError, GateError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.profiles import DeviceProfile, load_profile
from targets.transport import open_transport
from targets.validate import validate

TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "litert-torch", "ai-edge-litert",
         "torch-pruning", "torchao", "numpy")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _backends_for(recipe: Recipe, profile: DeviceProfile) -> list[str]:
    return list(recipe.backends or profile.backends)


# ------------------------------------------------------------------------------------------------ host phase
def export_all(result: StagesResult, recipe: Recipe, backends: list[str], out_dir: Path, x_eval: np.ndarray,
               y_eval: np.ndarray, ref: np.ndarray, progress: Progress,
               target_arch: str | None = None) -> dict[str, dict[str, Any]]:
    """Export and check every backend for one target CPU; a failure is recorded for that backend only.

    The target's arch matters: the fastest ONNX INT8 scheme differs between x86 (with or without VNNI) and Arm.
    """
    import torch

    example = (torch.zeros(*recipe.model.input_shape),)
    parent = f"{recipe.name}:{result.records[-1]['name'] if result.records else 'original'}"
    outcomes: dict[str, dict[str, Any]] = {}
    qat = recipe.stages.quantize is not None and recipe.stages.quantize.mode == "qat"
    for name in backends:
        family, precision = parse_backend(name)
        entry: dict[str, Any] = {"backend": family, "precision": precision}
        outcomes[name] = entry
        try:
            with progress.step(f"export {name}" + (f" for {target_arch}" if target_arch else "")):
                cfg = ExportConfig(name=recipe.name, precision=precision, parent=parent, target_arch=target_arch,
                                   **result.export_overrides)
                calib = result.calib if precision == "int8" else None
                qdq = outcomes.get("onnx-int8", {}).get("artifact")
                if name == "openvino-int8" and qat and qdq is not None:
                    # QAT weights: NNCF's re-quantization loses what QAT learned; OpenVINO reads ORT's verified QDQ
                    # model and runs it in INT8 (measured on digits: 99.17% vs 98.33% top-1).
                    art: Artifact = openvino_from_qdq_onnx(qdq, out_dir, recipe.name)
                else:
                    art = get_exporter(family)(result.model, example, calib, cfg, out_dir)
            entry["artifact"] = art
            with progress.step(f"check {name}"):
                entry["validation"] = validate(art, x_eval, ref, y_eval)
        except OutputMismatchError as exc:
            entry["error"] = exc.message
            entry["error_type"] = type(exc).__name__
            entry["exit_code"] = exc.exit_code
        except EdgeError as exc:
            entry["error"] = str(exc)
            entry["error_type"] = type(exc).__name__
            entry["exit_code"] = exc.exit_code
            progress.warn(f"{name}: {exc}")
    return outcomes


# ------------------------------------------------------------------------------------------------ device phase
def _artifact_record(name: str, entry: dict[str, Any], device_dir: Path, bench_rec: dict[str, Any] | None,
                     error: str | None) -> dict[str, Any]:
    art: Artifact | None = entry.get("artifact")
    rec: dict[str, Any] = {"name": name, "backend": entry["backend"], "precision": entry["precision"]}
    if art is not None:
        rec.update(file=os.path.relpath(art.path, device_dir), sha256=art.sha256, bytes=art.bytes,
                   parent=art.parent, metadata=art.metadata)
    validation = entry.get("validation")
    if validation:
        rec["validation"] = {k: validation[k] for k in ("max_abs_error", "top1_agreement", "computed_in")
                             if k in validation}
        rec["accuracy"] = validation.get("accuracy")
    err = entry.get("error") or error
    if bench_rec is not None:
        rec["accuracy"] = bench_rec.get("accuracy", rec.get("accuracy"))
        rec["latency_ms"] = bench_rec["latency_ms"]
        state = bench_rec.get("state", {}).get("after", {})
        rec["environment"] = {"runtime": bench_rec.get("runtime"), "threads": bench_rec.get("threads"),
                              "providers": bench_rec.get("providers"), "governor": state.get("governor"),
                              "temp_c": state.get("temp_c"), "os": bench_rec.get("environment", {}).get("os")}
        rec["valid"] = bool(bench_rec.get("valid")) and err is None
        rec["invalid_reasons"] = list(bench_rec.get("invalid_reasons", []))
        rec["bench"] = bench_rec
    else:
        rec["valid"] = False
        rec["invalid_reasons"] = []
    if err:
        rec["error"] = err
        rec["invalid_reasons"].append(err)
    return rec


def artifact_record(name: str, entry: dict[str, Any], device_dir: Path, bench_rec: dict[str, Any] | None,
                    error: str | None = None) -> dict[str, Any]:
    """One artifact's summary record from a runner record (used by ``edgepipe search`` for cached measurements)."""
    return _artifact_record(name, entry, device_dir, bench_rec, error)


def measure_device(profile: DeviceProfile, outcomes: dict[str, dict[str, Any]], root: Path, device_dir: Path,
                   inputs: Path, progress: Progress) -> tuple[list[dict[str, Any]], list[EdgeError]]:
    """Benchmark every artifact this device wants, over one transport; returns records and device errors."""
    records: list[dict[str, Any]] = []
    errors: list[EdgeError] = []
    transport = None
    try:
        for name in outcomes:  # exactly what was asked: the recipe's list, else the profile's
            entry = outcomes[name]
            art: Artifact | None = entry.get("artifact")
            bench_rec, error = None, None
            if art is not None:
                if device_dir != root:
                    art = _link_artifact(art, device_dir / "artifacts")
                    entry = {**entry, "artifact": art}
                try:
                    transport = transport or open_transport(profile)
                    with progress.step(f"bench {name} on {profile.name}"):
                        bench_rec = benchmark(profile, art, inputs, transport=transport)
                    atomic_write_json(device_dir / "bench" / f"{name}.json", bench_rec)
                except DeviceError as exc:
                    error = str(exc)
                    errors.append(exc)
            records.append(_artifact_record(name, entry, device_dir, bench_rec, error))
    finally:
        if transport is not None:
            transport.close()
    return records, errors


def _link_artifact(art: Artifact, folder: Path) -> Artifact:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for f in art.files or [art.path]:
        dst = folder / Path(f).name
        if not dst.exists():
            try:
                os.link(f, dst)
            except OSError:
                shutil.copy2(f, dst)
        files.append(str(dst))
    new = Artifact.from_dict({**art.to_dict(), "path": str(folder / Path(art.path).name), "files": files})
    new.save()
    return new


# ------------------------------------------------------------------------------------------------ the run
def run(recipe_path: str | Path, devices: list[str], out: Path | None = None, overrides: list[str] | None = None,
        profile_overrides: dict[str, Any] | None = None, stream: TextIO | None = None) -> list[dict[str, Any]]:
    recipe = load_recipe(recipe_path, overrides)
    profiles = [load_profile(d, profile_overrides) for d in devices]
    started = now_iso()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Path(out) if out else Path("runs") / f"{recipe.name}-{stamp}"
    root.mkdir(parents=True, exist_ok=True)
    run_id = f"{recipe.name}-{stamp}"
    store = open_store()  # a bad EDGEPIPE_DB fails here, before any work
    progress = Progress(root / "run.log", stream)
    try:
        return _run(recipe, profiles, root, run_id, started, progress, store)
    finally:
        progress.close()
        store.close()


def _run(recipe: Recipe, profiles: list[DeviceProfile], root: Path, run_id: str, started: str,
         progress: Progress, store: Store) -> list[dict[str, Any]]:
    progress.say(f"edgepipe {pipeline.__version__}: {recipe.name} -> {', '.join(p.name for p in profiles)} "
                 f"(run folder {root})")
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    for p in profiles:  # marked incomplete until finish_run: a crash leaves that verdict in the store
        store.begin_run(run_id, recipe.model_dump(mode="json"), p.name,
                        root if len(profiles) == 1 else root / p.name, started)
    with progress.step("load model and data"):
        model = load_model(recipe)
        data = load_data(recipe)
        base_acc = accuracy(model, data["eval"])
        macs, params = complexity(model, recipe.model.input_shape)
    baseline = {"accuracy": base_acc, "params": params, "macs": macs}
    progress.say(f"original model: accuracy {base_acc:.4f}, {params:,} params, {macs:,} MACs")
    result = run_stages(model, data, recipe, root, progress)
    x_eval, y_eval = arrays(data["eval"])
    ref = predict(result.model, x_eval)
    inputs = root / "inputs" / "eval.npz"
    inputs.parent.mkdir(parents=True, exist_ok=True)
    np.savez(inputs, x=x_eval, y=y_eval)
    arches = sorted({p.arch for p in profiles})
    by_arch: dict[str, dict[str, dict[str, Any]]] = {}
    for arch in arches:
        backends: list[str] = []
        for p in (p for p in profiles if p.arch == arch):
            backends += [b for b in _backends_for(recipe, p) if b not in backends]
        out_dir = root / "artifacts" if len(arches) == 1 else root / "artifacts" / arch
        by_arch[arch] = export_all(result, recipe, backends, out_dir, x_eval, y_eval, ref, progress, arch)
    outcomes = {f"{n} ({a})" if len(arches) > 1 else n: o for a, outs in by_arch.items() for n, o in outs.items()}

    def one(profile: DeviceProfile) -> tuple[dict[str, Any], list[EdgeError]]:
        device_dir = root if len(profiles) == 1 else root / profile.name
        wanted = {b: by_arch[profile.arch][b] for b in _backends_for(recipe, profile)}
        records, errors = measure_device(profile, wanted, root, device_dir, inputs, progress)
        summary = {
            "schema": 1, "recipe": recipe.name, "device": profile.name, "run_id": run_id,
            "baseline": baseline, "stages": result.records, "artifacts": records,
            "status": "failed" if errors or any(r.get("error") for r in records) else "complete",
            "started": started, "finished": now_iso(), "edgepipe_version": pipeline.__version__,
            "tool_versions": tool_versions(), "host": {"python": sys.version.split()[0]},
        }
        apply_gate(summary, recipe.gate, profile.name)
        atomic_write_json(device_dir / "summary.json", summary)
        store.finish_run(summary, device_dir)
        return summary, errors

    with ThreadPoolExecutor(max_workers=len(profiles)) as pool:
        done = list(pool.map(one, profiles))
    summaries = [s for s, _ in done]
    for s in summaries:
        progress.say(format_table(s))
    _raise_worst(summaries, [e for _, errs in done for e in errs], outcomes)
    return summaries


def _raise_worst(summaries: list[dict[str, Any]], device_errors: list[EdgeError],
                 outcomes: dict[str, dict[str, Any]]) -> None:
    if device_errors:
        raise DeviceError(f"{len(device_errors)} benchmark(s) failed on the device: {device_errors[0]}"
                          + (f" (and {len(device_errors) - 1} more)" if len(device_errors) > 1 else ""),
                          hint="see run.log; `edgepipe doctor DEVICE` checks the board")
    failed = {n: o for n, o in outcomes.items() if o.get("error")}
    if failed:
        first = next(iter(failed.values()))
        err = EdgeError(f"{len(failed)} backend(s) failed: "
                        + "; ".join(f"{n}: {o['error']}" for n, o in failed.items()),
                        hint="the other backends finished; their figures are in summary.json")
        err.exit_code = first.get("exit_code", 2)
        raise err
    for s in summaries:
        if not s["gate"]["passed"]:
            raise GateError(f"quality gate failed on {s['device']}: " + "; ".join(s["gate"]["failures"]),
                            hint="figures are in summary.json; relax `gate:` or improve the model")


def format_table(summary: dict[str, Any]) -> str:
    base = summary["baseline"]
    lines = [f"{summary['recipe']} on {summary['device']}  (original: accuracy {base['accuracy']:.4f}, "
             f"{base['params']:,} params, {base['macs']:,} MACs)"]
    for st in summary["stages"]:
        lines.append(f"  stage {st['name']:<9} accuracy {st.get('accuracy', float('nan')):.4f}  "
                     f"params {st.get('params', 0):>9,}  MACs {st.get('macs', 0):>11,}  {st.get('seconds', 0):.1f}s"
                     + (" (cached)" if st.get("cached") else ""))
    header = f"  {'artifact':<15} {'accuracy':>8} {'p50 ms':>8} {'p90 ms':>8} {'n':>6} {'size':>10}  valid"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for r in summary["artifacts"]:
        lat = r.get("latency_ms") or {}
        acc = r.get("accuracy")
        size = r.get("bytes")
        lines.append(f"  {r['name']:<15} {'-' if acc is None else f'{acc:.4f}':>8} "
                     f"{lat.get('p50', '-'):>8} {lat.get('p90', '-'):>8} {lat.get('n', '-'):>6} "
                     f"{'-' if size is None else f'{size / 1024:.1f} KiB':>10}  "
                     f"{'yes' if r.get('valid') else 'NO: ' + '; '.join(r.get('invalid_reasons', []))[:80]}")
    gate = summary["gate"]
    lines.append(f"  gate: {'passed' if gate['passed'] else 'FAILED'} (max accuracy drop {gate['max_accuracy_drop']} "
                 f"points)")
    return "\n".join(lines)


def bench_artifact(path: str | Path, device: str, profile_overrides: dict[str, Any] | None = None,
                   inputs: Path | None = None) -> dict[str, Any]:
    """``edgepipe bench``: one artifact on one device, same runner and rules as a run."""
    profile = load_profile(device, profile_overrides)
    p = Path(path)
    if not p.is_file():
        from targets.errors import ConfigError

        raise ConfigError(f"{p}: artifact not found", hint="give the path of a .onnx, .xml or .tflite file")
    art = Artifact.load(p)
    start = time.perf_counter()
    rec = benchmark(profile, art, inputs)
    rec["seconds"] = round(time.perf_counter() - start, 2)
    return rec
