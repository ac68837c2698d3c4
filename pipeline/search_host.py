"""The host side of a search: one candidate's stages and export, each cached, shared by every board searched.

Stages run through ``run_stages`` with the shared cache root as their run folder, so two candidates that differ only
in a later stage (or only in the backend) re-use the earlier stages; exports go through ``run.export_all`` (the same
exporters and checks as ``edgepipe run``) and are cached per backend. A lock serialises the host work of a fleet
search: the boards measure concurrently, the host trains and exports one thing at a time (it is CPU-bound anyway).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Recipe
from pipeline.model import accuracy, arrays, complexity, load_data, load_model, predict
from pipeline.progress import Progress
from pipeline.run import export_all
from pipeline.search_cache import ExportCache
from pipeline.search_space import Candidate, candidate_stages
from pipeline.stages import StagesResult, run_stages


class HostWork:
    """Model, data and baseline loaded once; ``artifact(candidate, arch)`` returns a checked, cached artifact."""

    def __init__(self, recipe: Recipe, cache: Path, work_dir: Path, progress: Progress) -> None:
        self.recipe, self.cache, self.progress = recipe, Path(cache), progress
        self.lock = threading.Lock()
        self.exports = ExportCache(self.cache)
        with progress.step("load model and data"):
            self.model = load_model(recipe)
            self.data = load_data(recipe)
            macs, params = complexity(self.model, recipe.model.input_shape)
            self.baseline: dict[str, Any] = {"accuracy": accuracy(self.model, self.data["eval"]), "params": params,
                                             "macs": macs}
        self.x_eval, self.y_eval = arrays(self.data["eval"])
        self.inputs = work_dir / "inputs" / "eval.npz"
        self.inputs.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.inputs, x=self.x_eval, y=self.y_eval)
        self.eval_fp = hashlib.sha256(self.x_eval.tobytes() + self.y_eval.tobytes()).hexdigest()
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
        result = run_stages(self.model, self.data, recipe, self.cache, self.progress)
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
    def artifact(self, cand: Candidate, arch: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(outcome entry as ``export_all`` makes it, {stages, stages_seconds, export_seconds, records})."""
        with self.lock:
            result, stage_s = self._stages(cand)
            key = self.exports.key(self._model_key(result), self.recipe.name, result.export_overrides, arch,
                                   self.eval_fp)
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

    def original_fp32(self, arch: str) -> dict[str, Any]:
        """The original model as FP32 ONNX: what every speed-up is measured against."""
        with self.lock:
            result = StagesResult(model=self.model, teacher=self.model, calib=np.zeros((0,), np.float32))
            key = self.exports.key(self._model_key(result), self.recipe.name, {}, arch, self.eval_fp)
            hit = self.exports.get(key, "onnx-fp32")
            if hit is not None:
                return hit
            recipe = self.recipe.model_copy(update={"stages": type(self.recipe.stages)()})
            return self._export_into_cache(key, "onnx-fp32", result, recipe, ["onnx-fp32"], arch)

    def _export_into_cache(self, key: str, backend: str, result: StagesResult, recipe: Recipe,
                           backends: list[str], arch: str) -> dict[str, Any]:
        """Export in a scratch folder, then move the checked artifact into the cache (a failure is not cached)."""
        self.exports.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=self.exports.dir))
        try:
            ref = predict(result.model, self.x_eval)
            res = StagesResult(model=copy.deepcopy(result.model), teacher=result.teacher, calib=result.calib,
                               records=result.records, export_overrides=result.export_overrides,
                               qat_ranges=result.qat_ranges)
            outcomes = export_all(res, recipe, backends, tmp, self.x_eval, self.y_eval, ref, self.progress, arch)
            entry = outcomes[backend]
            return entry if entry.get("error") else self.exports.put(key, backend, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
