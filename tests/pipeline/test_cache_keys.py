"""Cache keys that cannot go stale: they follow the code (globbed), the metric's identity and the data; a cached
measurement is re-checked with the runner's own rules on read, and a tampered one is measured again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pipeline.stages.cache as stage_cache
import targets
from pipeline.recipe.metrics import resolve_metric
from pipeline.search.cache import ExportCache, MeasurementCache
from targets.fingerprint import code_digest

ROOT = Path(__file__).resolve().parents[2]
RULES = {"warmup": 5, "min_iterations": 100, "min_seconds": 1.0, "max_seconds": 30.0}
GOOD = {"latency_ms": {"p50": 0.4, "p90": 0.5, "p99": 0.7, "mean": 0.42, "std": 0.05, "n": 400}, "valid": True,
        "invalid_reasons": []}

METRIC_PY = """
class Right:
    primary = "right"
    higher_is_better = True
    def __init__(self):
        self.n = self.k = 0
    def update(self, outputs, targets):
        self.n += len(targets); self.k += int((outputs[0].argmax(1) == targets).sum())
    def compute(self):
        return {"right": self.k / max(self.n, 1)}
"""


def test_switching_the_metric_gives_new_stage_export_and_measurement_keys(tmp_path: Path) -> None:
    top1, top5 = resolve_metric("top1", tmp_path).identity, resolve_metric("top5", tmp_path).identity
    assert top1 != top5
    m = MeasurementCache(tmp_path)
    assert m.key("abc", {"device": 1}, metric=top1) != m.key("abc", {"device": 1}, metric=top5)
    e = ExportCache(tmp_path)
    assert e.key("model", "r", {}, "x86_64", "eval", top1) != e.key("model", "r", {}, "x86_64", "eval", top5)
    k1 = stage_cache.stage_key("prune", "parent", {"ratio": 0.5}, "data", {"metric": top1})
    assert k1 != stage_cache.stage_key("prune", "parent", {"ratio": 0.5}, "data", {"metric": top5})


def test_editing_a_user_metrics_code_gives_a_new_identity(tmp_path: Path) -> None:
    (tmp_path / "mymetric.py").write_text(METRIC_PY)
    before = resolve_metric("mymetric:Right", tmp_path).identity
    (tmp_path / "mymetric.py").write_text(METRIC_PY.replace("self.k / max(self.n, 1)", "self.k / max(self.n, 2)"))
    import sys

    sys.modules.pop("mymetric", None)
    after = resolve_metric("mymetric:Right", tmp_path).identity
    assert before["name"] == after["name"] and before["source"] != after["source"]


def test_a_new_or_edited_module_changes_the_code_digest(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("A = 1\n")
    first = code_digest(pkg)
    (pkg / "heads.py").write_text("B = 2\n")          # a module nobody listed
    second = code_digest(pkg)
    (pkg / "a.py").write_text("A = 3\n")
    assert len({first, second, code_digest(pkg)}) == 3


def test_editing_any_stage_module_changes_the_stage_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "stages"
    shutil.copytree(ROOT / "pipeline" / "stages", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stage_cache, "__file__", str(copy / "cache.py"))
    before = stage_cache.stage_key("distill", "p", {}, "d")
    (copy / "heads.py").write_text((copy / "heads.py").read_text() + "\n# edited\n")
    assert stage_cache.stage_key("distill", "p", {}, "d") != before


def test_editing_any_exporter_module_changes_the_export_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", copy, ignore=shutil.ignore_patterns("__pycache__", "device_profiles"))
    monkeypatch.setattr(targets, "__file__", str(copy / "__init__.py"))
    cache = ExportCache(tmp_path)
    before = cache.key("m", "r", {}, None, "eval")
    (copy / "mixed_precision.py").write_text((copy / "mixed_precision.py").read_text() + "\n# edited\n")
    assert cache.key("m", "r", {}, None, "eval") != before


def test_changing_the_eval_data_gives_a_new_export_key(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    assert cache.key("m", "r", {}, None, "eval-a") != cache.key("m", "r", {}, None, "eval-b")


def test_a_cached_measurement_passes_the_runners_rules_on_read(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path)
    cache.put("k", {"bench": GOOD, "scored": {"accuracy": 0.98}})
    assert cache.get("k", RULES)["bench"] == GOOD


@pytest.mark.parametrize("tamper", [
    {"n": 1},                                   # fewer iterations than the rules ask, still "valid"
    {"p90": 0.3},                               # p90 < p50
    {"p50": float("inf")},
])
def test_a_tampered_cached_measurement_is_discarded_with_a_warning(tmp_path: Path, tamper: dict) -> None:
    cache = MeasurementCache(tmp_path)
    bad = {**GOOD, "latency_ms": {**GOOD["latency_ms"], **tamper}}
    cache.dir.mkdir(parents=True)
    (cache.dir / "k.json").write_text(json.dumps({"bench": bad, "scored": {}}))
    warnings: list[str] = []
    assert cache.get("k", RULES, warnings.append) is None
    assert len(warnings) == 1 and "discarded, computing it again" in warnings[0]
    assert not (cache.dir / "k.json").exists()


def test_a_malformed_cache_entry_is_discarded_not_a_traceback(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path)
    cache.dir.mkdir(parents=True)
    (cache.dir / "k.json").write_text("{not json")
    warnings: list[str] = []
    assert cache.get("k", RULES, warnings.append) is None and "JSONDecodeError" in warnings[0]

