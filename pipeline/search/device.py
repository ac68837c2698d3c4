"""One board's search: the successive-halving plan, each candidate measured (or read from the measurement cache),
the INT8 guard, the choice, the Pareto front and the interleaved comparison; ``search.json`` after every candidate.

The strategy and the reasons for it are described in ``pipeline/search.py``.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pipeline
from pipeline.phases.measure import artifact_record, measure_device
from pipeline.phases.outcome import ExportOutcome
from pipeline.phases.prepare import tool_versions
from pipeline.recipe.search_config import SearchConfig
from pipeline.results.gate import EPS, check_artifact, limits_of
from pipeline.results.int8_guard import guards, judge
from pipeline.results.rundir import is_usable, metric_drop, metric_value, now_iso, outranked, pareto_front
from pipeline.search.cache import MeasurementCache, device_fingerprint, digest
from pipeline.search.host import HostWork
from pipeline.search.report import write_chosen_recipe
from pipeline.search.space import Candidate
from pipeline.ui.progress import Bar, Progress, fmt_s
from targets import units
from targets.errors import DeviceError
from targets.jsonio import write_json
from targets.profiles import DeviceProfile
from targets.transport import open_transport


class DeviceSearch:
    """One board's search: plan, measure, choose; the host work is shared (``HostWork``)."""

    def __init__(self, profile: DeviceProfile, host: HostWork, cfg: SearchConfig, grid: dict[str, Any],
                 references: list[Candidate], out_dir: Path, mcache: MeasurementCache, progress: Progress,
                 stop: threading.Event, deadline: float | None) -> None:
        self.profile, self.host, self.cfg, self.grid, self.references = profile, host, cfg, grid, references
        self.out_dir, self.mcache, self.progress, self.stop, self.deadline = out_dir, mcache, progress, stop, deadline
        self.records: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.fingerprint: dict[str, Any] = {}
        self.started = now_iso()
        self.t0 = time.monotonic()
        self.status = "running"
        self.device_errors = 0
        self.measurements = 0          # device measurements this search used (from the cache or made now)
        self.measured_now = 0
        self.comparison: dict[str, Any] | None = None
        self.comparison_measured_now = 0
        self.chosen_recipe: str | None = None
        self.limits = limits_of(host.recipe.gate)
        self._bar = Bar()              # the live candidates bar while run() is under way (a no-op off a terminal)

    # ------------------------------------------------------------------------------------------------ plan
    def run(self) -> dict[str, Any]:
        try:
            self._probe()
            with self.progress.bar(f"[{self.profile.name}] candidates", self._left()) as self._bar:
                self._plan()
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        finally:
            self.write()
        return self.result()

    def _plan(self) -> None:
        backends = list(self.grid["backends"])
        self._note(f"rung 0: the recipe as written, on {len(self.references)} backend(s)")
        for cand in self.references:
            self._process(cand, "0 (recipe)")
        if self.cfg.strategy == "exhaustive":
            self._rung("exhaustive", backends, self.grid["points"])
        else:
            self._halving(backends)
        if self.status == "running":
            self.status = "complete"
        self._guard_chosen()
        self._compare()

    def _halving(self, backends: list[str]) -> None:
        """Successive halving over backends. Rung 1 measures the covering points (every value of every key) on
        every backend, so each dimension reaches every backend it applies to before any is dropped; from then on
        each rung keeps the fastest 1/eta backends (each drop says why) and widens their points by eta."""
        alive = list(backends)
        points = list(self.grid["points"])
        take = [p for p in (self.grid.get("first") or points[:1]) if p in points]
        width = max(1, len(take))
        rung = 1
        while points and alive and not self._out_of_budget():
            if rung > 1:
                keep = max(1, math.ceil(len(alive) / self.cfg.eta)) if len(alive) > 1 else 1
                ranked = sorted(alive, key=self._score)
                dropped = ranked[keep:]
                alive = ranked[:keep]
                if dropped:
                    self._note(f"rung {rung}: keeping {', '.join(alive)}; dropped "
                               + ", ".join(f"{b} ({self._drop_reason(b, alive)})" for b in dropped))
                width = len(points) if len(alive) == 1 else width * self.cfg.eta
                take = points[:width]
            points = [p for p in points if p not in take]
            self._rung(str(rung), alive, take)
            rung += 1

    def _drop_reason(self, backend: str, kept: list[str]) -> str:
        """Why halving drops a backend, in words: slower (its fastest gate-passing p90 against the slowest kept
        one's), failed the gate (the first limit it broke), failed to export or check, or not measured."""
        recs = [r for r in self.records.values() if r["backend"] == backend and r.get("role") != "int8 guard"]
        mine = self._score(backend)[0]
        if mine != math.inf:
            worst = max(kept, key=lambda b: self._score(b)[0])
            return f"slower: p90 {mine:.4g} ms vs {worst} {self._score(worst)[0]:.4g} ms"
        gate = next((f for r in recs for f in r.get("failures") or []), None)
        if gate is not None:
            return f"failed the gate: {gate.removeprefix(backend + ': ')}"
        failed = next((r.get("reason") for r in recs if r.get("reason")), None)
        return failed if failed else "not measured yet: no candidate of it ran"

    def _rung(self, rung: str, backends: list[str], points: list[str]) -> None:
        for point in points:
            for backend in backends:
                cand = self.grid["cells"][point].get(backend)
                if cand is not None:
                    self._process(cand, rung)

    def _score(self, backend: str) -> tuple[float, str]:
        """A backend's rank: its fastest p90 that met the gate (inf when none did)."""
        p90s = [r["latency_ms"]["p90"] for r in self.records.values()
                if r["backend"] == backend and r.get("feasible")]
        return (min(p90s) if p90s else math.inf, backend)

    def _out_of_budget(self) -> bool:
        b = self.cfg.budget
        if self.stop.is_set():
            self.status = "interrupted"
        elif b.candidates is not None and self.measurements >= b.candidates:
            self.status = "budget (candidates)"
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.status = "budget (minutes)"
        return self.status != "running"

    # ------------------------------------------------------------------------------------------------ one candidate
    def _process(self, cand: Candidate, rung: str, role: str = "candidate") -> dict[str, Any] | None:
        if cand.id in self.records:
            return self.records[cand.id]
        if self._out_of_budget():
            return None
        start = time.monotonic()
        rec: dict[str, Any] = {**cand.to_dict(), "rung": rung, "role": role}
        entry, info = self.host.artifact(cand, self.profile.arch)
        rec["seconds"] = {"stages": info["stages_seconds"], "export": info["export_seconds"], "device": 0.0}
        rec["stage_records"] = [{k: s.get(k) for k in ("name", "accuracy", "metric", "params", "macs", "cached")}
                                for s in info["stage_records"]]
        art = entry.artifact
        host_rec = dict(entry.validation or {})
        rec["host_check"] = {"accuracy": host_rec.get("accuracy"), "metric": host_rec.get("metric"),
                             "drop": metric_drop(self.host.baseline, host_rec, self.limits)}
        if art is not None:
            rec.update(sha256=art.sha256, bytes=art.bytes, file=art.path)
        reason = self._skip_reason(cand, entry, rec)
        if reason:
            rec.update(status="failed" if entry.failure else "skipped", reason=reason, feasible=False)
        else:
            self._measure(cand, entry, rec)
        rec["seconds"]["total"] = round(time.monotonic() - start, 2)
        self.records[cand.id] = rec
        self.order.append(cand.id)
        self._mark_int8_guard()
        self._log(rec)
        self.write()
        return rec

    def _skip_reason(self, cand: Candidate, entry: ExportOutcome, rec: dict[str, Any]) -> str | None:
        if entry.failure is not None:
            return f"export or check failed: {entry.failure.message}"
        drop, limit = rec["host_check"]["drop"], units.max_metric_drop(self.limits)
        if drop is not None and limit is not None and drop > limit + EPS:
            # it can never be chosen, but a smaller or more accurate one may still belong on the front
            better = next((r for r in self.records.values() if r.get("latency_ms") and r.get("valid")
                           and (r.get("bytes") or 0) <= rec.get("bytes", 0)
                           and r.get("drop") is not None and r["drop"] <= drop), None)
            if better is not None:
                return (f"host check: metric {drop:.2f}{units.unit_word({}, limit)} worse than the original (gate "
                        f"{limit:g}), and "
                        f"{better['id']} is as small and as accurate; not measured")
            rec["measured_for"] = "the Pareto front (fails the gate on the host check)"
        max_bytes = self.limits["max_bytes"]
        if max_bytes is not None and rec.get("bytes", 0) > max_bytes:
            return f"size {rec['bytes']} bytes exceeds gate max_bytes {max_bytes}; not measured"
        for other in self.records.values():
            if other.get("graph_key") == cand.graph_key and other.get("status") in ("measured", "cached"):
                if (other["host_check"]["drop"] or 0) <= (drop or 0):
                    return (f"same graph as {other['id']} (same latency and size by construction) with a metric no "
                            f"better on the host; not measured")
        return None

    def _measure(self, cand: Candidate, entry: ExportOutcome, rec: dict[str, Any]) -> None:
        key = self.mcache.key(rec["sha256"], {**self.fingerprint, "inputs": self.host.eval_fp},
                              metric=self.host.ctx.metric.identity)
        # {"bench": runner record, "scored": the task metric of its outputs}, re-checked with the runner's rules
        hit = self.mcache.get(key, self.fingerprint.get("bench"), self.progress.warn)
        device_dir = self.out_dir / "candidates" / cand.id
        start = time.monotonic()
        if hit is not None:
            one = artifact_record(cand.backend, entry, device_dir, hit["bench"], None, hit.get("scored"))
            rec["status"] = "cached"
        else:
            records, errors = measure_device(self.profile, {cand.backend: entry}, device_dir, device_dir,
                                             self.host.inputs, self.progress, self.host.ctx)
            one = records[0]
            if errors:
                self.device_errors += 1
            else:
                self.measured_now += 1
                if one.get("valid") and one.get("bench"):
                    scored = {k: one[k] for k in ("metric", "accuracy") if one.get(k) is not None}
                    self.mcache.put(key, {"bench": one["bench"], "scored": scored})
            rec["status"] = "measured" if not errors else "failed"
        self.measurements += 1
        rec["seconds"]["device"] = round(time.monotonic() - start, 2)
        for k in ("accuracy", "metric", "latency_ms", "valid", "invalid_reasons", "environment", "error"):
            if k in one:
                rec[k] = one[k]
        rec["graph_key"] = cand.graph_key
        rec["drop"] = metric_drop(self.host.baseline, rec, self.limits)
        rec["failures"] = self._failures(rec)
        rec["feasible"] = not rec["failures"]
        if self.device_errors >= 2:
            raise DeviceError(f"{self.profile.name}: two benchmarks failed on the device: {one.get('error')}",
                              hint="see search.log; `edgepipe doctor DEVICE` checks the board")

    def _failures(self, rec: dict[str, Any]) -> list[str]:
        """The gate's own verdict on this candidate (``edgepipe run`` would fail exactly these)."""
        return check_artifact(as_artifact(rec), self.limits, self.host.baseline, self.profile.name)

    # ------------------------------------------------------------------------------------------------ INT8 guard
    def _sibling(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """The measured float artifact of the same family and architecture (FP32, else FP16)."""
        family = rec["backend"].split("-")[0]
        arch_key = digest([rec["stages"].get("distill"), rec["stages"].get("prune")])
        for precision in ("fp32", "fp16"):
            for r in self.records.values():
                if r["backend"] == f"{family}-{precision}" and r.get("latency_ms") and r.get("valid") and \
                        digest([r["stages"].get("distill"), r["stages"].get("prune")]) == arch_key:
                    return r
        return None

    def _mark_int8_guard(self) -> None:
        """The INT8 guard of ``edgepipe run`` on each int8/fp16 candidate and its measured float sibling."""
        for r in self.records.values():
            if not guards(r) or not r.get("latency_ms"):
                continue
            sib = self._sibling(r)
            if sib is not None:
                r["int8_guard"] = judge(as_artifact(r), as_artifact(sib), self.profile.name)

    def _outranked(self, rec: dict[str, Any]) -> bool:
        """The release's rule: a guard-flagged slower candidate never wins over its as-good float sibling."""
        sib = self._sibling(rec) if rec.get("int8_guard") else None
        return sib is not None and outranked(as_artifact(rec), [as_artifact(sib)])

    def _guard_chosen(self) -> None:
        """Before an INT8 candidate is chosen, its float sibling is measured (outside the budget) and compared."""
        for _ in range(8):
            chosen = self.chosen()
            if chosen is None or chosen["precision"] != "int8" or self._sibling(chosen) is not None:
                return
            family = chosen["backend"].split("-")[0]
            stages = {**chosen["stages"], "quantize": None}
            sib = Candidate(stages, f"{family}-fp32", {"guard for": chosen["id"], "backends": f"{family}-fp32"})
            if sib.id in self.records:
                return
            if self.stop.is_set():
                return
            saved, self.status = self.status, "running"
            budget, self.cfg.budget.candidates = self.cfg.budget.candidates, None
            deadline, self.deadline = self.deadline, None
            try:
                self._process(sib, "guard", role="int8 guard")
            finally:
                self.status, self.cfg.budget.candidates, self.deadline = saved, budget, deadline

    # ------------------------------------------------------------------------------------------------ results
    def chosen(self) -> dict[str, Any] | None:
        feasible = [r for r in self.records.values() if r.get("feasible") and r.get("role") != "int8 guard"
                    and is_usable(as_artifact(r)) and not self._outranked(r)]   # the release's rule (rundir)
        if not feasible:
            return None
        return min(feasible, key=lambda r: (r["latency_ms"]["p90"], r.get("bytes") or 0,
                                            -(metric_value(r) or 0), r["id"]))

    def front(self) -> list[str]:
        pts = [(r["id"], metric_value(r), r["latency_ms"]["p90"], r.get("bytes") or 0)
               for r in self.records.values() if r.get("valid") and r.get("latency_ms") and not r.get("error")
               and metric_value(r) is not None]
        return pareto_front(pts, higher_is_better=higher_is_better(self.host.baseline))

    def recipe_best(self) -> dict[str, Any] | None:
        refs = [r for r in self.records.values() if r["rung"].startswith("0") and r.get("feasible")]
        return min(refs, key=lambda r: r["latency_ms"]["p90"]) if refs else None

    def _compare(self) -> None:
        """Chosen vs the recipe's fastest artifact vs the original FP32 ONNX, measured interleaved in rounds."""
        from pipeline.search.compare import interleaved

        chosen, best = self.chosen(), self.recipe_best()
        if chosen is None or self.cfg.confirm_rounds <= 0 or self.stop.is_set():
            return
        self.comparison, self.comparison_measured_now = interleaved(self, chosen, best)

    def artifact_of(self, rec: dict[str, Any]) -> Any:
        cand = Candidate(rec["stages"], rec["backend"])
        entry, _ = self.host.artifact(cand, self.profile.arch)
        return entry.artifact

    def _probe(self) -> None:
        from targets.doctor import probe

        with self.progress.step(f"{self.profile.name}: probe runtimes"):
            tr = open_transport(self.profile)
            try:
                found = probe(self.profile, tr)
            finally:
                tr.close()
        if found.get("error"):
            raise DeviceError(f"{self.profile.name}: the runner cannot start: {found['error']}",
                              hint=f"`edgepipe doctor {self.profile.name}` says what is missing")
        self.fingerprint = device_fingerprint(self.profile, found)

    def _note(self, message: str) -> None:
        self.progress.say(f"[{self.profile.name}] {message}")

    def _log(self, rec: dict[str, Any]) -> None:
        done = len(self.records)
        elapsed = time.monotonic() - self.t0
        left_cands = self._left()
        per = elapsed / max(done, 1)
        lat = (rec.get("latency_ms") or {}).get("p90")
        what = (f"p90 {lat} ms, metric {metric_value(rec)}, {rec.get('bytes', 0) / 1024:.1f} KiB"
                + ("" if rec.get("feasible") else " (does not meet the gate)") if lat is not None
                else rec.get("reason", rec.get("status")))
        self._note(f"{done:>2} {rec['status']:<8} {rec['label']}: {what} · {fmt_s(elapsed)} elapsed, "
                   f"~{fmt_s(per * left_cands)} left (≤{left_cands} more at ~{per:.0f}s)")
        self._bar.update(done, done + left_cands)

    def _left(self) -> int:
        b = self.cfg.budget
        remaining = sum(1 for cells in self.grid["cells"].values() for c in cells.values()
                        if c.id not in self.records)
        if b.candidates is not None:
            remaining = min(remaining, max(0, b.candidates - self.measurements))
        return remaining

    def result(self) -> dict[str, Any]:
        chosen = self.chosen()
        front = self.front()
        for r in self.records.values():
            r["pareto"] = r["id"] in front
        exhaustive = len({c.id for cells in self.grid["cells"].values() for c in cells.values()})
        return {
            "schema": 1, "kind": "search", "recipe": self.host.recipe.name, "device": self.profile.name,
            "scale": self.host.recipe.scale_record(),
            "status": self.status, "started": self.started, "finished": now_iso(),
            "edgepipe_version": pipeline.__version__, "tool_versions": tool_versions(),
            "strategy": {"name": self.cfg.strategy, "eta": self.cfg.eta,
                         "budget": self.cfg.budget.model_dump(mode="json"), "space": self.cfg.space},
            "baseline": self.host.baseline, "gate": dict(self.limits),
            "fingerprint": self.fingerprint,
            "counts": {"exhaustive": exhaustive, "candidates": len(self.records),
                       "device_measurements": self.measurements, "measured_now": self.measured_now,
                       "from_cache": self.measurements - self.measured_now,
                       "comparison_measured_now": self.comparison_measured_now},
            "candidates": [self.records[i] for i in self.order],
            "front": front, "chosen": chosen["id"] if chosen else None, "chosen_recipe": self.chosen_recipe,
            "recipe_best": (self.recipe_best() or {}).get("id"), "comparison": self.comparison,
            "seconds": round(time.monotonic() - self.t0, 1),
        }

    def write(self) -> dict[str, Any]:
        res = self.result()
        chosen = self.chosen()
        if chosen is not None and self.status not in ("running",):
            self.chosen_recipe = str(write_chosen_recipe(self.host.recipe, chosen, self.profile.name))
            res["chosen_recipe"] = self.chosen_recipe
        write_json(self.out_dir / "search.json", res)
        return res


def as_artifact(rec: dict[str, Any]) -> dict[str, Any]:
    """A candidate record as the gate and the guard read an artifact record (backend = the family)."""
    return {**rec, "backend": rec["backend"].split("-")[0]}


def higher_is_better(rec: dict[str, Any]) -> bool:
    return bool((rec.get("metric") or {}).get("higher_is_better", True))
