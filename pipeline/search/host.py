"""The host side of a search: one candidate's stages and export, each cached, shared by every board searched.

Stages run through ``run_stages`` with the shared cache root as their run folder, so two candidates that differ only
in a later stage (or only in the backend) re-use the earlier stages; exports go through the export phase of
``edgepipe run`` (the same exporters and checks) and are cached per backend. A lock serialises the host work of a fleet
search: the boards measure concurrently, the host trains and exports one thing at a time (it is CPU-bound anyway).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipeline.phases import prepare
from pipeline.phases.export import export_all
from pipeline.phases.latency import onnx_latency_ratio
from pipeline.phases.outcome import ExportOutcome
from pipeline.phases.prepare import ExportPlan
from pipeline.recipe.config import Recipe
from pipeline.recipe.model import predict
from pipeline.recipe.task import stage_plan
from pipeline.search.cache import ExportCache
from pipeline.search.space import Candidate, candidate_stages
from pipeline.stages.chain import StagesResult, run_stages
from pipeline.ui.progress import Progress


class HostWork:
    """Model, data and baseline loaded once; ``artifact(candidate, arch)`` returns a checked, cached artifact."""

    def __init__(self, recipe: Recipe, cache: Path, work_dir: Path, progress: Progress) -> None:
        self.recipe, self.cache, self.progress = recipe, Path(cache), progress
        self.lock = threading.Lock()
        self.exports = ExportCache(self.cache)
        prep = prepare.load(recipe, progress)   # the same phase as `edgepipe run`: the task metric as run scores it
        self.model, self.data, self.ctx, self.example = prep.model, prep.data, prep.ctx, prep.example
        self.baseline: dict[str, Any] = prep.baseline
        self.inputs = work_dir / "inputs" / "eval.npz"
        self.eval_fp = prepare.write_eval_inputs(self.ctx, self.inputs)
        self._variants: OrderedDict[str, tuple[StagesResult, float]] = OrderedDict()

    # ------------------------------------------------------------------------------------------------ stages
    def _stages(self, cand: Candidate) -> tuple[StagesResult, float]:
        """The candidate's stages (from the shared stage cache when they ran before); seconds of work done now."""
        hit = self._variants.get(cand.variant_key)
        if hit is not None:
            self._variants.move_to_end(cand.variant_key)
            return hit[0], 0.0
        recipe = self.recipe.model_copy(update={"stages": candidate_stages(self.recipe.stages, cand)})
        start = time.perf_counter()
        # a candidate past the gate is judged (and dropped, with its reason) by the search, not stopped at its stage
        plan = stage_plan(recipe, self.ctx, self.data, timing=onnx_latency_ratio, stop_at_gate=False)
        result = run_stages(self.model, self.data, plan, self.cache, self.progress)
        seconds = sum(r.get("seconds", 0.0) for r in result.records if not r.get("cached"))
        self._variants[cand.variant_key] = (result, seconds)
        while len(self._variants) > 3:  # big models: keep only the few variants the boards are working on
            self._variants.popitem(last=False)
        self.progress(f"stages of {cand.label()}: {time.perf_counter() - start:.1f}s")
        return result, seconds

    def _model_key(self, result: StagesResult) -> str:
        if result.records:
            return str(result.records[-1]["key"])
        from pipeline.stages.cache import model_hash

        return "original:" + model_hash(result.model)

    # ------------------------------------------------------------------------------------------------ exports
    def artifact(self, cand: Candidate, arch: str) -> tuple[ExportOutcome, dict[str, Any]]:
        """(outcome entry as ``export_all`` makes it, {stages, stages_seconds, export_seconds, records})."""
        with self.lock:
            result, stage_s = self._stages(cand)
            key = self.exports.key(self._model_key(result), self.recipe.name, result.export_overrides, arch,
                                   self.eval_fp, self.ctx.metric.identity)
            info = {"stages_seconds": round(stage_s, 2), "export_seconds": 0.0, "stage_records": result.records,
                    "export_cached": True}
            hit = self.exports.get(key, cand.backend)
            if hit is not None:
                return hit, info
            recipe = self.recipe.model_copy(update={"stages": candidate_stages(self.recipe.stages, cand)})
            backends = [cand.backend]
            qat = (cand.stages.get("quantize") or {}).get("mode") == "qat"
            if cand.backend == "openvino-int8" and qat:
                backends.insert(0, "onnx-int8")  # OpenVINO INT8 after QAT is read from the checked QDQ model
            start = time.perf_counter()
            entry = self._export_into_cache(key, cand.backend, result, recipe, backends, arch)
            info.update(export_seconds=round(time.perf_counter() - start, 2), export_cached=False)
            return entry, info

    def original_fp32(self, arch: str) -> ExportOutcome:
        """The original model as FP32 ONNX: what every speed-up is measured against."""
        with self.lock:
            result = StagesResult(model=self.model, teacher=self.model, calib={})
            key = self.exports.key(self._model_key(result), self.recipe.name, {}, arch, self.eval_fp,
                                   self.ctx.metric.identity)
            hit = self.exports.get(key, "onnx-fp32")
            if hit is not None:
                return hit
            recipe = self.recipe.model_copy(update={"stages": type(self.recipe.stages)()})
            return self._export_into_cache(key, "onnx-fp32", result, recipe, ["onnx-fp32"], arch)

    def _export_into_cache(self, key: str, backend: str, result: StagesResult, recipe: Recipe,
                           backends: list[str], arch: str) -> ExportOutcome:
        """Export in a scratch folder, then move the checked artifact into the cache (a failure is not cached)."""
        self.exports.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=self.exports.dir))
        try:
            ref = predict(result.model, self.ctx.inputs, batch_axes=self.ctx.batch_axes)
            res = StagesResult(model=copy.deepcopy(result.model), teacher=result.teacher, calib=result.calib,
                               records=result.records, export_overrides=result.export_overrides,
                               qat_ranges=result.qat_ranges)
            outcomes = export_all(res, ExportPlan.of(recipe), backends, tmp, self.ctx, ref, self.example, self.progress,
                                  arch)
            entry = outcomes[backend]
            return entry if entry.failure is not None else self.exports.put(key, backend, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
