"""Choosing from measured candidates: Pareto front, INT8 guard, gate, and the recipe written for the user."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import yaml

from pipeline.recipe.config import Gate, load_recipe
from pipeline.recipe.search_config import SearchConfig
from pipeline.results.rundir import pareto_front
from pipeline.search.device import DeviceSearch
from pipeline.search.report import write_chosen_recipe
from pipeline.ui.progress import Progress


def test_pareto_front_keeps_every_tradeoff_and_drops_the_dominated():
    pts = [("fast-small", 0.95, 0.10, 10), ("accurate", 0.99, 0.30, 40), ("dominated", 0.94, 0.20, 20),
           ("smallest", 0.90, 0.40, 5), ("tie", 0.95, 0.10, 10)]
    front = pareto_front(pts)
    assert set(front) == {"fast-small", "tie", "accurate", "smallest"}
    assert front[0] in ("fast-small", "tie") and front[-1] == "smallest"   # sorted by p90


def test_pareto_front_reads_lower_is_better_metrics():
    pts = [("a", 0.10, 1.0, 10), ("b", 0.20, 1.0, 10)]   # an error metric: 0.10 is better
    assert pareto_front(pts, higher_is_better=False) == ["a"]


def _search(records: list[dict], drop: float = 1.0) -> DeviceSearch:
    host = SimpleNamespace(recipe=SimpleNamespace(gate=Gate(max_accuracy_drop=drop), name="digits"),
                           baseline={"accuracy": 0.99})
    s = DeviceSearch(SimpleNamespace(name="board"), host, SearchConfig(), {"points": [], "cells": {}}, [],
                     None, None, None, threading.Event(), None)
    for r in records:
        r.setdefault("stages", {"distill": None, "prune": {"ratio": 0.5}, "quantize": {"mode": "ptq"}})
        r.setdefault("precision", r["backend"].split("-")[1])
        r.setdefault("valid", True)
        r["latency_ms"] = {"p50": r["latency_ms"]["p90"] * 0.9, **r["latency_ms"]}
        r["drop"] = (0.99 - r["accuracy"]) * 100
        r["failures"] = s._failures(r)
        r["feasible"] = not r["failures"]
        s.records[r["id"]] = r
    s._mark_int8_guard()
    return s


def test_an_int8_candidate_slower_than_its_float_sibling_is_never_chosen():
    s = _search([{"id": "int8", "backend": "onnx-int8", "accuracy": 0.99, "latency_ms": {"p90": 0.20}, "bytes": 10},
                 {"id": "fp32", "backend": "onnx-fp32", "accuracy": 0.99, "latency_ms": {"p90": 0.15}, "bytes": 40},
                 {"id": "ov", "backend": "openvino-int8", "accuracy": 0.99, "latency_ms": {"p90": 0.18}, "bytes": 9}])
    assert s.records["int8"]["int8_guard"]["slower"] and "SLOWER than onnx-fp32" in s.records["int8"]["int8_guard"][
        "message"]
    assert s.chosen()["id"] == "fp32"   # openvino-int8 has no measured sibling here: _guard_chosen measures one


def test_the_fastest_candidate_that_fails_the_gate_is_not_chosen():
    s = _search([{"id": "fast", "backend": "onnx-int8", "accuracy": 0.95, "latency_ms": {"p90": 0.05}, "bytes": 5},
                 {"id": "ok", "backend": "onnx-int8", "accuracy": 0.985, "latency_ms": {"p90": 0.08}, "bytes": 8,
                  "stages": {"distill": None, "prune": {"ratio": 0.25}, "quantize": {"mode": "qat"}}},
                 {"id": "invalid", "backend": "tflite-int8", "accuracy": 0.99, "latency_ms": {"p90": 0.01},
                  "bytes": 5, "valid": False, "invalid_reasons": ["device throttled during the run"]}])
    assert s.chosen()["id"] == "ok"
    assert "is 4.0 points below baseline" in s.records["fast"]["failures"][0]
    assert set(s.front()) == {"fast", "ok"}   # an invalid measurement is never on the front


def test_chosen_recipe_is_a_plain_recipe_with_the_chosen_settings(tmp_path, digits_recipe):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(digits_recipe.read_text())
    for name in ("models.py", "data.py"):
        (tmp_path / name).write_text((digits_recipe.parent / name).read_text())
    recipe = load_recipe(recipe_path)
    stages = {"distill": recipe.stages.distill.model_dump(mode="json"),
              "prune": {**recipe.stages.prune.model_dump(mode="json"), "ratio": 0.5, "round_to": 16},
              "quantize": None}
    path = write_chosen_recipe(recipe, {"label": "ratio 0.5 · onnx-fp32", "stages": stages, "backend": "onnx-fp32",
                                        "latency_ms": {"p90": 0.1}, "accuracy": 0.98, "bytes": 1000}, "board")
    assert path == tmp_path / "recipe.board.yaml"
    raw = yaml.safe_load(path.read_text())
    assert "search" not in raw and "quantize" not in raw["stages"]
    assert raw["stages"]["distill"] == {"width": 0.5, "epochs": 16, "temperature": 4.0, "alpha": 0.7}  # as written
    again = load_recipe(path)
    assert again.stages.prune.ratio == 0.5 and again.stages.prune.round_to == 16
    assert again.backends == ["onnx-fp32"] and again.stages.quantize is None


def test_successive_halving_keeps_the_fastest_backends_and_widens_their_settings():
    from pipeline.search.space import Candidate

    backends = ["a-fp32", "b-fp32", "c-fp32", "d-fp32"]
    speed = {"a-fp32": 4.0, "b-fp32": 1.0, "c-fp32": 2.0, "d-fp32": 3.0}
    points = [f"p{i}" for i in range(6)]
    cells = {p: {b: Candidate({"prune": {"ratio": i / 10}}, b, {"point": p}) for b in backends}
             for i, p in enumerate(points)}
    s = _search([])
    s.grid = {"points": points, "cells": cells, "backends": backends}
    s.progress = Progress(None, io.StringIO())
    calls: list[tuple[str, str]] = []

    def fake_process(cand, rung, role="candidate"):
        calls.append((rung, cand.backend))
        s.records[cand.id] = {"id": cand.id, "backend": cand.backend, "feasible": True,
                              "latency_ms": {"p90": speed[cand.backend]}}
        s.measurements += 1
        return s.records[cand.id]

    s._process = fake_process
    for b in backends:                        # rung 0: every backend at the recipe's point
        fake_process(Candidate({"prune": None}, b, {}), "0 (recipe)")
    s._halving(backends)
    rungs: dict[str, list[str]] = {}
    for rung, backend in calls:
        rungs.setdefault(rung, []).append(backend)
    assert sorted(rungs["1"]) == sorted(backends)                       # the first point on every backend
    assert sorted(set(rungs["2"])) == ["b-fp32", "c-fp32"] and len(rungs["2"]) == 2 * 2   # 1/eta kept, eta points
    assert set(rungs["3"]) == {"b-fp32"} and len(rungs["3"]) == 3      # the last one gets the rest of the space
    assert len(calls) == 4 + 4 + 4 + 3 < 4 + 4 * 6                      # fewer than exhaustive enumeration
    notes = s.progress.stream.getvalue()
    assert "dropped d-fp32 (slower: p90 3 ms vs c-fp32 2 ms), a-fp32 (slower: p90 4 ms vs c-fp32 2 ms)" in notes


def test_halving_names_the_true_reason_of_every_drop():
    """Issue 21: "dropped openvino-fp32, onnx-int8, tflite-int8 (slower)" when the two INT8 had failed the gate."""
    s = _search([{"id": "f", "backend": "onnx-fp32", "accuracy": 0.99, "latency_ms": {"p90": 0.10}, "bytes": 40},
                 {"id": "o", "backend": "openvino-fp32", "accuracy": 0.99, "latency_ms": {"p90": 0.30}, "bytes": 40},
                 {"id": "q", "backend": "onnx-int8", "accuracy": 0.95, "latency_ms": {"p90": 0.05}, "bytes": 10}])
    s.records["t"] = {"id": "t", "backend": "tflite-int8", "status": "failed", "feasible": False,
                      "reason": "export or check failed: top1 0.91 is 8 points below the FP32 parent's 0.99 (max 1)"}
    assert s._drop_reason("openvino-fp32", ["onnx-fp32"]) == "slower: p90 0.3 ms vs onnx-fp32 0.1 ms"
    assert s._drop_reason("onnx-int8", ["onnx-fp32"]) == ("failed the gate: accuracy 0.950 is 4.0 points below "
                                                          "baseline 0.990 (max 1)")
    assert s._drop_reason("tflite-int8", ["onnx-fp32"]).startswith("export or check failed: top1 0.91 is 8 points")
    assert s._drop_reason("tflite-fp32", ["onnx-fp32"]) == "not measured yet: no candidate of it ran"


def test_search_feasible_set_and_int8_flags_are_exactly_the_gate_and_the_guard_of_a_run():
    """One road: for the same records, search's verdicts are the run's gate and INT8 guard, rule for rule."""
    from pipeline.results.gate import evaluate_gate
    from pipeline.results.int8_guard import guard_records

    recs = [
        {"id": "a", "backend": "onnx-int8", "accuracy": 0.985, "latency_ms": {"p90": 0.20}, "bytes": 10},
        {"id": "b", "backend": "onnx-fp32", "accuracy": 0.99, "latency_ms": {"p90": 0.15}, "bytes": 40},
        {"id": "c", "backend": "tflite-int8", "accuracy": 0.97, "latency_ms": {"p90": 0.05}, "bytes": 7},
        {"id": "d", "backend": "tflite-fp32", "accuracy": 0.99, "latency_ms": {"p90": 0.30}, "bytes": 8},
        {"id": "e", "backend": "openvino-int8", "accuracy": 0.99, "latency_ms": {"p90": 0.06}, "bytes": 12,
         "valid": False, "invalid_reasons": ["too few iterations"]},
        {"id": "f", "backend": "openvino-fp32", "accuracy": None, "latency_ms": {"p90": 0.1}, "bytes": 30},
    ]
    gate = Gate(max_accuracy_drop=1.0, max_latency_ms=0.25, max_bytes=35)
    s = _search([dict(r) for r in recs if r["accuracy"] is not None], drop=1.0)
    s.limits = __import__("pipeline.results.gate", fromlist=["limits_of"]).limits_of(gate)
    s.records["f"] = {**recs[5], "precision": "fp32", "valid": True, "latency_ms": {"p50": 0.09, "p90": 0.1},
                      "stages": s.records["a"]["stages"]}
    for r in s.records.values():
        r["failures"] = s._failures(r)
        r["feasible"] = not r["failures"]
    s._mark_int8_guard()
    arts = [{**r, "backend": r["backend"].split("-")[0]} for r in s.records.values()]
    summary = {"recipe": "digits", "baseline": {"accuracy": 0.99}, "artifacts": arts}
    verdicts = {v["artifact"]: v["passed"] for v in evaluate_gate(summary, gate, "board")["artifacts"]}
    assert {r["backend"] for r in s.records.values() if r["feasible"]} == {n for n, ok in verdicts.items() if ok}
    assert {r["backend"] for r in s.records.values() if not r["feasible"]} >= {"onnx-fp32", "tflite-int8",
                                                                               "openvino-int8", "openvino-fp32"}
    guard_records(arts, None, "board")
    run_flags = {f"{a['backend']}-{a['precision']}": a["int8_guard"]["flagged"] for a in arts if "int8_guard" in a}
    search_flags = {r["backend"]: r["int8_guard"]["flagged"] for r in s.records.values() if "int8_guard" in r}
    assert search_flags == run_flags and run_flags["onnx-int8"] and run_flags["tflite-int8"] is False
