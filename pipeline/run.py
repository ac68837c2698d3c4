"""The orchestrator of ``edgepipe run``: the only module besides the search that knows the whole chain (DESIGN §1).

prepare (recipe -> model, data, baseline, eval inputs) -> stages -> export every backend per target CPU and check
each artifact against its parent -> measure, per device (concurrently for a fleet) -> judge (gate, INT8 guard) ->
summary.json and the store. A backend that fails is recorded and the others go on; the run exits non-zero at the end.
"""

from __future__ import annotations

import contextlib
import errno
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import yaml

import pipeline
from pipeline.phases import prepare
from pipeline.phases.export import export_all
from pipeline.phases.latency import onnx_latency_ratio
from pipeline.phases.measure import GenerationPlan, artifact_record, measure_device
from pipeline.phases.original import export_original, measure_original, original_dir
from pipeline.phases.outcome import ExportOutcome
from pipeline.phases.prepare import ExportPlan, backends_for, tool_versions
from pipeline.recipe.config import Recipe, load_recipe
from pipeline.recipe.model import load_data, load_model, predict
from pipeline.recipe.task import build_context, stage_plan
from pipeline.results.gate import apply_gate
from pipeline.results.headline import headline
from pipeline.results.int8_guard import guard_records
from pipeline.results.records import Summary
from pipeline.results.rundir import now_iso
from pipeline.results.runstate import claim_run_folder, new_run_id
from pipeline.results.store import Store, open_store
from pipeline.results.table import format_table
from pipeline.stages import distributed
from pipeline.stages.chain import StagesResult, run_stages
from pipeline.stages.train import resolve_device
from pipeline.ui.console import third_party_to_log
from pipeline.ui.progress import Progress
from targets.errors import ConfigError, DeviceError, EdgeError, GateError
from targets.jsonio import write_json
from targets.preflight import preflight
from targets.profiles import DeviceProfile, load_profile


# ------------------------------------------------------------------------------------------------ the run
def run(recipe_path: str | Path, devices: list[str], out: Path | None = None, overrides: list[str] | None = None,
        profile_overrides: dict[str, Any] | None = None, stream: TextIO | None = None) -> list[dict[str, Any]]:
    recipe = load_recipe(recipe_path, overrides)
    profiles = [load_profile(d, profile_overrides) for d in devices]
    for profile in profiles:  # exit 4 in seconds, before minutes of stages, when a device cannot benchmark
        preflight(profile, backends_for(recipe, profile))
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
            except KeyboardInterrupt:   # Ctrl-C, and SIGTERM (the CLI makes it raise the same)
                _mark_failed(store, run_id, recipe, profiles, started, status="interrupted")
                raise
            finally:
                progress.close()
                store.close()
                distributed.shutdown()


def _mark_failed(store: Store, run_id: str, recipe: Recipe, profiles: list[DeviceProfile], started: str,
                 status: str = "failed") -> None:
    """Rows a failure (or an interrupt) left ``incomplete`` -- it came before a device's summary was written --
    become ``failed`` (or ``interrupted``)."""
    for p in profiles:
        try:
            row = store.get_run(run_id, p.name)
            if row is not None and row.get("status") == "incomplete":
                store.finish_run({"run_id": run_id, "recipe": recipe.name, "device": p.name, "status": status,
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
    prep = prepare.load(recipe, progress)
    ctx, baseline = prep.ctx, prep.baseline
    progress.say(f"original model: {ctx.label} {baseline['metric']['value']:.4f}, {baseline['params']:,} params, "
                 f"{baseline['macs']:,} MACs")
    warning = ctx.chance_warning(baseline)
    if warning:
        progress.warn(warning)
        baseline["warnings"] = [warning]
    plan = stage_plan(recipe, ctx, prep.data, timing=onnx_latency_ratio, baseline=baseline)
    result = run_stages(prep.model, prep.data, plan, root, progress)
    prepare.check_finite(recipe, result)
    inputs = root / "inputs" / "eval.npz"
    prepare.write_eval_inputs(ctx, inputs)
    export_plan = ExportPlan.of(recipe)
    by_arch = _export_per_arch(result, export_plan, recipe, profiles, root, prep, progress)
    outcomes = {f"{n} ({a})" if len(by_arch) > 1 else n: o for a, outs in by_arch.items() for n, o in outs.items()}
    originals = {a: export_original(prep, recipe, a, original_dir(root, a, len(by_arch) > 1), progress)
                 for a in by_arch}   # the headline's reference: the untouched model as FP32 ONNX
    context = {"recipe": recipe, "run_id": run_id, "started": started, "baseline": baseline, "result": result,
               "inputs": inputs, "root": root, "multi": len(profiles) > 1, "originals": originals,
               "generation": GenerationPlan.of(export_plan.generate, result.model, ctx.inputs)}
    store_errors: list[EdgeError] = []
    with ThreadPoolExecutor(max_workers=len(profiles)) as pool:
        done = list(pool.map(lambda p: _device(p, by_arch[p.arch], context, ctx, progress, store, store_errors),
                             profiles))
    summaries = [s for s, _ in done]
    for s in summaries:
        progress.say(format_table(s))
    if store_errors:
        raise store_errors[0]
    _raise_worst(summaries, [e for _, errs in done for e in errs], outcomes)
    return summaries


def _export_per_arch(result: StagesResult, plan: ExportPlan, recipe: Recipe, profiles: list[DeviceProfile],
                     root: Path, prep: prepare.Prepared, progress: Progress) -> dict[str, dict[str, ExportOutcome]]:
    """One export per target CPU architecture, of every backend any device of that architecture wants."""
    ref = predict(result.model, prep.ctx.inputs, batch_axes=prep.ctx.batch_axes)
    arches = sorted({p.arch for p in profiles})
    by_arch: dict[str, dict[str, ExportOutcome]] = {}
    for arch in arches:
        backends: list[str] = []
        for p in (p for p in profiles if p.arch == arch):
            backends += [b for b in backends_for(recipe, p) if b not in backends]
        out_dir = root / "artifacts" if len(arches) == 1 else root / "artifacts" / arch
        by_arch[arch] = export_all(result, plan, backends, out_dir, prep.ctx, ref, prep.example, progress, arch)
    return by_arch


def _device(profile: DeviceProfile, exported: dict[str, ExportOutcome], run: dict[str, Any], ctx: Any,
            progress: Progress, store: Store, store_errors: list[EdgeError]) -> tuple[dict[str, Any], list[EdgeError]]:
    """Measure and judge one device: its summary.json (DESIGN §6) and its store row."""
    recipe: Recipe = run["recipe"]
    root: Path = run["root"]
    device_dir = root / profile.name if run["multi"] else root
    wanted = {b: exported[b] for b in backends_for(recipe, profile)}
    try:
        records, errors = measure_device(profile, wanted, root, device_dir, run["inputs"], progress, ctx,
                                         run["generation"])
    except EdgeError as exc:  # one device's failure must not lose the others' summaries or store rows
        records = [artifact_record(b, e, device_dir, None, str(exc)) for b, e in wanted.items()]
        errors = [exc]
    for warning in guard_records(records, {b: o.artifact for b, o in wanted.items() if o.artifact is not None},
                                 profile.name):
        progress.warn(warning)
    original = measure_original(profile, run["originals"][profile.arch], root, device_dir, run["inputs"], progress,
                                ctx)
    summary = {
        "schema": 1, "recipe": recipe.name, "device": profile.name, "run_id": run["run_id"],
        "scale": recipe.scale_record(), "baseline": run["baseline"], "stages": run["result"].records,
        "artifacts": records, "original": original,
        "status": "failed" if errors or any(r.get("error") for r in records) else "complete",
        "started": run["started"], "finished": now_iso(), "edgepipe_version": pipeline.__version__,
        "tool_versions": tool_versions(), "host": {"python": sys.version.split()[0]},
    }
    apply_gate(summary, recipe.gate, profile.name)
    summary["headline"] = headline(summary)   # after the gate: the pick may read its verdicts
    summary = Summary.of(summary).dump()   # typed records (results/records.py), written as schema 1 key for key
    write_json(device_dir / "summary.json", summary)
    try:
        store.finish_run(summary, device_dir)
    except EdgeError as exc:  # e.g. a store that broke during the run: the summary is already on disk
        store_errors.append(exc)
    return summary, errors


def _raise_worst(summaries: list[dict[str, Any]], device_errors: list[EdgeError],
                 outcomes: dict[str, ExportOutcome]) -> None:
    if device_errors:
        first_code = device_errors[0].exit_code
        err = DeviceError(f"{len(device_errors)} benchmark(s) failed on the device: {device_errors[0]}"
                          + (f" (and {len(device_errors) - 1} more)" if len(device_errors) > 1 else ""),
                          hint="see run.log; `edgepipe doctor DEVICE` checks the board")
        err.exit_code = first_code  # a ConfigError in one device's thread stays exit 2
        raise err
    failed = {n: o.failure for n, o in outcomes.items() if o.failure is not None}
    if failed:
        err = EdgeError(f"{len(failed)} backend(s) failed: " + "; ".join(f"{n}: {f.message}"
                                                                   for n, f in failed.items()),
                        hint="the other backends finished; their figures are in summary.json")
        err.exit_code = next(iter(failed.values())).exit_code
        raise err
    for s in summaries:
        if not s["gate"]["passed"]:
            raise GateError(f"quality gate failed on {s['device']}: " + "; ".join(s["gate"]["failures"]),
                            hint="figures are in summary.json; relax `gate:` or improve the model")
