"""The orchestrator: the only module that knows the whole chain (DESIGN §1).

Host phase, once: recipe -> model + data -> stages -> export every backend -> check each artifact against its parent.
Device phase, per device (concurrently for a fleet): benchmark every artifact the device wants -> summary.json.
A backend that fails is recorded and the others go on; the run exits non-zero at the end.
"""

from __future__ import annotations

import contextlib
import errno
import io
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
from pipeline import distributed
from pipeline.config import Recipe, load_recipe
from pipeline.console import third_party_to_log
from pipeline.gate import apply_gate
from pipeline.int8_guard import guard_records
from pipeline.latency import onnx_latency_ratio
from pipeline.model import complexity, load_data, load_model, predict
from pipeline.progress import Progress
from pipeline.rundir import now_iso
from pipeline.runstate import claim_run_folder, new_run_id
from pipeline.stages import StagesResult, run_stages
from pipeline.stages.common import example_from
from pipeline.stages.train import resolve_device
from pipeline.store import Store, open_store
from pipeline.table import format_table
from pipeline.task import TaskContext, build_context, stage_plan
from targets import export_order, get_exporter, get_simulator, parse_backend, requires
from targets.artifact import Artifact, atomic_write_bytes, atomic_write_json
from targets.artifact_trust import artifact_for_bench
from targets.device import benchmark, push_inputs, remove_inputs
from targets.errors import ConfigError, DeviceError, EdgeError, GateError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.preflight import preflight
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
def export_all(result: StagesResult, recipe: Recipe, backends: list[str], out_dir: Path, ctx: TaskContext,
               ref: list[np.ndarray], example: tuple[Any, ...], progress: Progress,
               target_arch: str | None = None) -> dict[str, dict[str, Any]]:
    """Export and check every backend for one target CPU; a failure is recorded for that backend only.

    Every output is checked against the FP32 parent (the stages' final model); an INT8 artifact is judged by the
    task metric's drop against that parent. The target's arch matters: the fastest ONNX INT8 scheme differs between
    x86 (with or without VNNI) and Arm.
    """
    parent = f"{recipe.name}:{result.records[-1]['name'] if result.records else 'original'}"
    parent_score = ctx.score(ref)
    names = {"input_names": ctx.input_names, "output_names": list(recipe.model.outputs or [])}
    outcomes: dict[str, dict[str, Any]] = {}
    ov_from = result.export_overrides.get("ov_int8_from", "model")
    qcfg = recipe.stages.quantize
    mixed = qcfg.mixed_precision() if qcfg is not None else None
    for name in export_order(backends, ov_from):  # a backend that reads another's artifact comes after it
        family, precision = parse_backend(name)
        entry: dict[str, Any] = {"backend": family, "precision": precision}
        outcomes[name] = entry
        try:
            with progress.step(f"export {name}" + (f" for {target_arch}" if target_arch else "")):
                cfg = ExportConfig(name=recipe.name, precision=precision, parent=parent, target_arch=target_arch,
                                   **names, **result.export_overrides)
                calib = result.calib if precision == "int8" else None
                art = _export_one(name, family, result, example, calib, cfg, out_dir, outcomes, mixed, ctx, ref,
                                  progress)
            entry["artifact"] = art
            with progress.step(f"check {name}"):
                labels = ctx.targets if ctx.metric.classification else None
                entry["validation"] = validate(art, ctx.inputs, ref, labels, classification=ctx.metric.classification,
                                               score=ctx.score, parent_score=parent_score,
                                               max_drop=recipe.gate.max_metric_drop)
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


def _export_one(name: str, family: str, result: StagesResult, example: tuple[Any, ...], calib: Any,
                cfg: ExportConfig, out_dir: Path, outcomes: dict[str, dict[str, Any]], mixed: dict[str, Any] | None,
                ctx: TaskContext, ref: list[np.ndarray], progress: Progress) -> Artifact:
    """One exporter call: from another backend's artifact where the path declares one (targets.REQUIRES), through
    the accuracy-aware mixed-precision search for INT8 with ``auto_keep_float``, else straight."""
    deps = requires(name, cfg.ov_int8_from)
    if deps:
        missing = [d for d in deps if outcomes.get(d, {}).get("artifact") is None]
        if missing:
            raise EdgeError(f"{name} is built from {', '.join(missing)}, which failed",
                            hint=f"fix {', '.join(missing)} first (see its error above)")
        return get_exporter(family)(result.model, example, calib, cfg, out_dir,
                                    sources={d: outcomes[d]["artifact"] for d in deps})
    if mixed is not None and cfg.precision == "int8" and calib is not None:
        from targets.mixed_precision import MixedPrecisionConfig, search

        mp = MixedPrecisionConfig(**mixed)
        return search(family, get_exporter(family), result.model, example, calib, cfg, out_dir, ctx.inputs, ref, mp,
                      score=_points_scorer(ctx, mp.samples), log=progress.say, simulate=get_simulator(family))
    return get_exporter(family)(result.model, example, calib, cfg, out_dir)


def _points_scorer(ctx: TaskContext, n: int) -> tuple[str, Any]:
    """The task metric on the first ``n`` eval samples as points where higher is better (x100 for fractions,
    negated for lower-is-better metrics), so the mixed-precision search compares drops in the gate's units."""
    targets = ctx.targets[:n] if ctx.targets is not None else None
    reference = [r[:n] for r in ctx.reference]

    def points(outputs: list[np.ndarray]) -> float:
        m = ctx.metric.score(outputs, targets, reference)
        value = float(m["value"]) * (100.0 if m.get("unit") == "fraction" else 1.0)
        return value if m.get("higher_is_better", True) else -value

    return ctx.metric.name, points


# ------------------------------------------------------------------------------------------------ device phase
def _artifact_record(name: str, entry: dict[str, Any], device_dir: Path, bench_rec: dict[str, Any] | None,
                     error: str | None, scored: dict[str, Any] | None = None) -> dict[str, Any]:
    art: Artifact | None = entry.get("artifact")
    rec: dict[str, Any] = {"name": name, "backend": entry["backend"], "precision": entry["precision"]}
    if art is not None:
        rec.update(file=os.path.relpath(art.path, device_dir), sha256=art.sha256, bytes=art.bytes,
                   parent=art.parent, metadata=art.metadata)
    validation = entry.get("validation")
    if validation:
        rec["validation"] = {k: validation[k] for k in ("max_abs_error", "top1_agreement", "computed_in", "cosine",
                                                        "per_output", "metric_drop", "check") if k in validation}
        if "metric" in validation:
            rec["metric"] = validation["metric"]
        if validation.get("accuracy") is not None:
            rec["accuracy"] = validation.get("accuracy")
    err = entry.get("error") or error
    if scored:   # what the device computed, scored on the host: the figure of record
        rec.update(scored)
    if bench_rec is not None:
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


def _read_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        keys = sorted((k for k in data.files if k.startswith("out")), key=lambda k: int(k[3:]))
        return [np.asarray(data[k]) for k in keys]


def artifact_record(name: str, entry: dict[str, Any], device_dir: Path, bench_rec: dict[str, Any] | None,
                    error: str | None = None, scored: dict[str, Any] | None = None) -> dict[str, Any]:
    """One artifact's summary record from a runner record (used by ``edgepipe search`` for cached measurements)."""
    return _artifact_record(name, entry, device_dir, bench_rec, error, scored)


def measure_device(profile: DeviceProfile, outcomes: dict[str, dict[str, Any]], root: Path, device_dir: Path,
                   inputs: Path, progress: Progress,
                   ctx: TaskContext | None = None) -> tuple[list[dict[str, Any]], list[EdgeError]]:
    """Benchmark every artifact this device wants, over one transport; returns records and device errors.

    The eval inputs go to the device once (not once per artifact); each job returns its raw outputs, which are
    scored here with the task metric. An artifact that failed its check is not benchmarked: its figures would
    look like those of a working model.
    """
    records: list[dict[str, Any]] = []
    errors: list[EdgeError] = []
    transport = None
    remote_inputs: str | None = None
    try:
        for name in outcomes:  # exactly what was asked: the recipe's list, else the profile's
            entry = outcomes[name]
            art: Artifact | None = entry.get("artifact")
            bench_rec, error, scored = None, None, None
            if art is not None and not entry.get("error"):
                if device_dir != root:
                    art = _link_artifact(art, device_dir / "artifacts")
                    entry = {**entry, "artifact": art}
                try:
                    transport = transport or open_transport(profile)
                    if remote_inputs is None:
                        with progress.step(f"send eval inputs to {profile.name}"):
                            remote_inputs = push_inputs(profile, transport, inputs)
                    out_file = device_dir / "outputs" / f"{name}.npz"
                    with progress.step(f"bench {name} on {profile.name}"):
                        bench_rec = benchmark(profile, art, remote_inputs, transport=transport,
                                              outputs=out_file if ctx is not None else None)
                    atomic_write_json(device_dir / "bench" / f"{name}.json", bench_rec)
                    if ctx is not None and out_file.is_file():
                        try:
                            scored = ctx.record(_read_outputs(out_file))
                        except Exception as exc:  # noqa: BLE001 - outputs the metric cannot read: a failed check
                            error = f"the device's outputs cannot be scored: {type(exc).__name__}: {exc}"
                except DeviceError as exc:
                    error = str(exc)
                    errors.append(exc)
            records.append(_artifact_record(name, entry, device_dir, bench_rec, error, scored))
    finally:
        if transport is not None:
            if remote_inputs is not None:
                try:
                    remove_inputs(transport, remote_inputs)
                except EdgeError:
                    pass
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
    for profile in profiles:  # exit 4 in seconds, before minutes of stages, when a device cannot benchmark
        preflight(profile, _backends_for(recipe, profile))
    started = now_iso()
    run_id = new_run_id(recipe.name)  # time + random suffix: two runs in one second never share an id
    root = Path(out) if out else Path("runs") / run_id
    if distributed.init(resolve_device(recipe.train.device).type):   # launched by torchrun / --nproc
        root, run_id, started = distributed.broadcast_object((root, run_id, started))   # rank 0's run folder
        if not distributed.is_main():
            try:
                return _train_alongside(recipe, root)
            finally:
                distributed.shutdown()
    try:
        return _claimed_run(recipe, profiles, root, run_id, started, stream)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR):
            raise
        raise ConfigError(f"{exc.filename or root}: cannot write: {exc.strerror} (run folder {root})",
                          hint="give --out a writable folder with free space; finished stages stay cached") from None


def _claimed_run(recipe: Recipe, profiles: list[DeviceProfile], root: Path, run_id: str, started: str,
                 stream: TextIO | None) -> list[dict[str, Any]]:
    with claim_run_folder(root, run_id):  # a live run's folder is refused
        store = open_store()  # a bad EDGEPIPE_DB fails here, before any work
        with contextlib.ExitStack() as quiet:
            if stream is None:  # the CLI: third-party console noise goes to run.log, our lines to the console
                stream = quiet.enter_context(third_party_to_log(root / "run.log"))
            progress = Progress(root / "run.log", stream)
            try:
                return _run(recipe, profiles, root, run_id, started, progress, store)
            except Exception:
                _mark_failed(store, run_id, recipe, profiles, started)  # never left `incomplete` by a failure
                raise
            finally:
                progress.close()
                store.close()
                distributed.shutdown()


def _mark_failed(store: Store, run_id: str, recipe: Recipe, profiles: list[DeviceProfile], started: str) -> None:
    """Rows a failure left ``incomplete`` (it happened before a device's summary was written) become ``failed``."""
    for p in profiles:
        try:
            row = store.get_run(run_id, p.name)
            if row is not None and row.get("status") == "incomplete":
                store.finish_run({"run_id": run_id, "recipe": recipe.name, "device": p.name, "status": "failed",
                                  "started": started, "finished": now_iso()})
        except Exception:  # noqa: BLE001 - the store itself may be what failed; the original error matters more
            pass


def _train_alongside(recipe: Recipe, root: Path) -> list[dict[str, Any]]:
    """A rank other than 0: train its share of every stage, then leave; rank 0 exports, measures and writes."""
    model = load_model(recipe)
    data = load_data(recipe)
    ctx = build_context(recipe, model, data)
    run_stages(model, data, stage_plan(recipe, ctx, data), root, lambda _m: None)
    return []


def _run(recipe: Recipe, profiles: list[DeviceProfile], root: Path, run_id: str, started: str,
         progress: Progress, store: Store) -> list[dict[str, Any]]:
    progress.say(f"edgepipe {pipeline.__version__}: {recipe.name} -> {', '.join(p.name for p in profiles)} "
                 f"(run folder {root})")
    if recipe.scale != 1.0:
        progress.warn(f"scale {recipe.scale:g}: a shortened run, not the recipe's figures ("
                      + ", ".join(f"{k} {a}->{b}" for k, (a, b) in recipe.scale_record()["changed"].items()) + ")")
    # as written (scale included, not applied): loading the run folder's recipe again runs the same thing
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe.as_written(), sort_keys=False))
    for p in profiles:  # marked incomplete until finish_run: a crash leaves that verdict in the store
        store.begin_run(run_id, recipe.as_written(), p.name,
                        root if len(profiles) == 1 else root / p.name, started)
    with progress.step("load model and data"):
        model = load_model(recipe)
        data = load_data(recipe)
        ctx = build_context(recipe, model, data)
        example = example_from(data["calib"], ctx.input_names)
        params, macs = complexity(model, example)
    baseline = {**ctx.record(ctx.reference), "params": params, "macs": macs}
    progress.say(f"original model: {ctx.label} {baseline['metric']['value']:.4f}, {params:,} params, {macs:,} MACs")
    warning = ctx.chance_warning(baseline)
    if warning:
        progress.warn(warning)
        baseline["warnings"] = [warning]
    result = run_stages(model, data, stage_plan(recipe, ctx, data, timing=onnx_latency_ratio), root, progress)
    ref = predict(result.model, ctx.inputs)
    inputs = root / "inputs" / "eval.npz"
    extra = {"y": np.asarray(ctx.targets)} if ctx.metric.classification and "y" not in ctx.inputs else {}
    buf = io.BytesIO()
    np.savez(buf, **ctx.inputs, __order__=np.array(ctx.input_names), **extra)
    atomic_write_bytes(inputs, buf.getvalue())  # a full disk never leaves a truncated eval.npz at its final name
    arches = sorted({p.arch for p in profiles})
    by_arch: dict[str, dict[str, dict[str, Any]]] = {}
    for arch in arches:
        backends: list[str] = []
        for p in (p for p in profiles if p.arch == arch):
            backends += [b for b in _backends_for(recipe, p) if b not in backends]
        out_dir = root / "artifacts" if len(arches) == 1 else root / "artifacts" / arch
        by_arch[arch] = export_all(result, recipe, backends, out_dir, ctx, ref, example, progress, arch)
    outcomes = {f"{n} ({a})" if len(arches) > 1 else n: o for a, outs in by_arch.items() for n, o in outs.items()}

    def one(profile: DeviceProfile) -> tuple[dict[str, Any], list[EdgeError]]:
        device_dir = root if len(profiles) == 1 else root / profile.name
        wanted = {b: by_arch[profile.arch][b] for b in _backends_for(recipe, profile)}
        try:
            records, errors = measure_device(profile, wanted, root, device_dir, inputs, progress, ctx)
        except EdgeError as exc:  # one device's failure must not lose the others' summaries or store rows
            records = [_artifact_record(b, e, device_dir, None, str(exc)) for b, e in wanted.items()]
            errors = [exc]
        for warning in guard_records(records, {b: o["artifact"] for b, o in wanted.items() if o.get("artifact")},
                                     profile.name):
            progress.warn(warning)
        summary = {
            "schema": 1, "recipe": recipe.name, "device": profile.name, "run_id": run_id,
            "scale": recipe.scale_record(), "baseline": baseline, "stages": result.records, "artifacts": records,
            "status": "failed" if errors or any(r.get("error") for r in records) else "complete",
            "started": started, "finished": now_iso(), "edgepipe_version": pipeline.__version__,
            "tool_versions": tool_versions(), "host": {"python": sys.version.split()[0]},
        }
        apply_gate(summary, recipe.gate, profile.name)
        atomic_write_json(device_dir / "summary.json", summary)
        try:
            store.finish_run(summary, device_dir)
        except EdgeError as exc:  # e.g. a store that broke during the run: the summary is already on disk
            store_errors.append(exc)
        return summary, errors

    store_errors: list[EdgeError] = []
    with ThreadPoolExecutor(max_workers=len(profiles)) as pool:
        done = list(pool.map(one, profiles))
    summaries = [s for s, _ in done]
    for s in summaries:
        progress.say(format_table(s))
    if store_errors:
        raise store_errors[0]
    _raise_worst(summaries, [e for _, errs in done for e in errs], outcomes)
    return summaries


def _raise_worst(summaries: list[dict[str, Any]], device_errors: list[EdgeError],
                 outcomes: dict[str, dict[str, Any]]) -> None:
    if device_errors:
        first_code = device_errors[0].exit_code
        err = DeviceError(f"{len(device_errors)} benchmark(s) failed on the device: {device_errors[0]}"
                          + (f" (and {len(device_errors) - 1} more)" if len(device_errors) > 1 else ""),
                          hint="see run.log; `edgepipe doctor DEVICE` checks the board")
        err.exit_code = first_code  # a ConfigError in one device's thread stays exit 2
        raise err
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


def bench_artifact(path: str | Path, device: str, profile_overrides: dict[str, Any] | None = None,
                   inputs: Path | None = None, repeat: int | None = None) -> dict[str, Any]:
    """``edgepipe bench``: one artifact on one device, same runner and rules as a run."""
    profile = load_profile(device, profile_overrides)
    if repeat is not None:
        if not 1 <= repeat <= 10:
            raise ConfigError(f"--repeat {repeat}: give 1 to 10")
        profile.bench.repeat = repeat
    art = artifact_for_bench(path)  # the file given is what is measured; its sidecar is checked, not trusted
    start = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as tmp:
        out_file = Path(tmp) / "outputs.npz"
        rec = benchmark(profile, art, inputs, outputs=out_file if inputs else None)
        if inputs is not None and out_file.is_file():
            with np.load(inputs, allow_pickle=False) as data:
                labels = np.asarray(data["y"]) if "y" in data.files else None
            outs = _read_outputs(out_file)
            if labels is not None and outs:   # top-1 of the first output, scored here (the runner knows no metric)
                rec["accuracy"] = round(float((outs[0].reshape(len(outs[0]), -1).argmax(1) == labels).mean()), 6)
                rec["n_eval"] = int(len(labels))
    rec["seconds"] = round(time.perf_counter() - start, 2)
    return rec
