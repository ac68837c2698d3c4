"""The original model as the user had it, exported to FP32 ONNX and measured on each device: the headline's reference.

Every speed-up edgepipe claims is against this (pipeline/results/headline.py). It goes through the same phases as
every artifact -- ``export_all`` with the untouched model as the "stages' result", the same check, the same runner on
the same device -- into ``artifacts/original/`` (per arch for a fleet of several CPUs). Both steps are cached in the
run folder: the export by the model's weights, the measurement per device by the artifact's sha256, the device's
bench and runtime settings and the eval inputs, so a re-run that only changed a stage measures the original once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pipeline.phases.export import export_all
from pipeline.phases.measure import artifact_record, measure_device
from pipeline.phases.outcome import ExportOutcome, Failure
from pipeline.phases.prepare import ExportPlan, Prepared
from pipeline.recipe.config import Recipe
from pipeline.stages.cache import model_hash
from pipeline.stages.chain import StagesResult
from pipeline.ui.progress import Progress
from targets.artifact import sha256_file
from targets.device import record_problems
from targets.errors import EdgeError
from targets.jsonio import write_json
from targets.profiles import DeviceProfile

#: the original's name in summary.json (``original.name``), bench/ and outputs/
ORIGINAL = "original"
BACKEND = "onnx-fp32"


def original_dir(root: Path, arch: str, several_arches: bool) -> Path:
    return root / "artifacts" / arch / ORIGINAL if several_arches else root / "artifacts" / ORIGINAL


def export_original(prep: Prepared, recipe: Recipe, arch: str, out_dir: Path, progress: Progress) -> ExportOutcome:
    """The untouched model as checked FP32 ONNX for ``arch``, re-used from ``out_dir`` when its weights are the same.
    A failure is returned (and warned), never raised: the run's artifacts do not depend on it."""
    key = {"model": model_hash(prep.model), "inputs": prep.ctx.input_names, "outputs": list(recipe.model.outputs or []),
           "arch": arch, "name": recipe.name}
    cached = _cached(out_dir / "outcome.json", key)
    if cached is not None:
        progress.say(f"original model: FP32 ONNX export re-used from {out_dir}")
        return cached
    progress.say("original model: FP32 ONNX export, the reference of the headline")
    result = StagesResult(model=copy.deepcopy(prep.model), teacher=prep.model, calib={})
    plan = ExportPlan(f"{recipe.name}-{ORIGINAL}", list(recipe.model.outputs or []), None,
                      ExportPlan.of(recipe).max_drop)
    try:
        outcome = export_all(result, plan, [BACKEND], out_dir, prep.ctx, prep.ctx.reference, prep.example, progress,
                             arch)[BACKEND]
    except EdgeError as exc:   # export_all records per-backend failures; this is anything around them
        outcome = ExportOutcome("onnx", "fp32", failure=Failure.of(exc))
    if outcome.usable:
        write_json(out_dir / "outcome.json", {"key": key, "outcome": outcome.to_json()})
    else:
        progress.warn(f"the original model's FP32 ONNX export failed, so there is no headline: "
                      f"{outcome.failure.message if outcome.failure else 'unknown'}")
    return outcome


def measure_original(profile: DeviceProfile, outcome: ExportOutcome, root: Path, device_dir: Path, inputs: Path,
                     progress: Progress, ctx: Any) -> dict[str, Any]:
    """The original's artifact record on one device (summary.json ``original``), measured by the same runner as
    every artifact; re-used from ``device_dir/original.json`` when nothing it depends on changed."""
    if not outcome.usable:
        return artifact_record(ORIGINAL, outcome, device_dir, None)
    key = {"sha256": outcome.artifact.sha256, "device": profile.name,
           "bench": profile.bench.model_dump(mode="json"), "runtime": profile.runtime.model_dump(mode="json"),
           "inputs": sha256_file(inputs)}
    cache = device_dir / "original.json"
    try:
        cached = json.loads(cache.read_text()) if cache.is_file() else None
    except (OSError, json.JSONDecodeError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("record"), dict) \
            and cached["record"].get("valid"):
        # re-checked with the runner's own rules, as every cached measurement is: an edited file is not believed
        problems = record_problems(cached["record"].get("bench"), profile.bench.model_dump(mode="json"))
        if not problems:
            progress.say(f"original model on {profile.name}: measurement re-used from {cache}")
            return cached["record"]
        progress.warn(f"cache entry {cache} is invalid ({'; '.join(problems)}); discarded, measuring again")
    try:
        records, _ = measure_device(profile, {ORIGINAL: outcome}, root, device_dir, inputs, progress, ctx)
        record = records[0]
    except EdgeError as exc:   # the reference failing costs the headline, not the run
        record = artifact_record(ORIGINAL, outcome, device_dir, None, str(exc))
    if record.get("error"):
        progress.warn(f"the original model could not be measured on {profile.name}, so there is no headline: "
                      f"{record['error']}")
    elif record.get("valid"):
        write_json(cache, {"key": key, "record": record})
    return record


def _cached(path: Path, key: dict[str, Any]) -> ExportOutcome | None:
    """The cached export outcome when its key matches and its files are still the ones it measured."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        outcome = ExportOutcome.from_json(data["outcome"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    art = outcome.artifact
    if art is None or not Path(art.path).is_file() or sha256_file(art.path) != art.sha256:
        return None
    return outcome
