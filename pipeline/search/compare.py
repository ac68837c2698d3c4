"""The search's last word on one board: the chosen candidate, the recipe's fastest artifact and the original model
as FP32 ONNX, measured interleaved in rounds (so drift in the board's state hits all three alike)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from targets.device import benchmark
from targets.transport import open_transport

if TYPE_CHECKING:
    from pipeline.search.device import DeviceSearch


def interleaved(s: DeviceSearch, chosen: dict[str, Any],
                best: dict[str, Any] | None) -> tuple[dict[str, Any] | None, int]:
    """(the comparison record, measurements made now); (None, 0) when the original cannot be exported or the search
    was stopped."""
    rounds = s.cfg.confirm_rounds
    original = s.host.original_fp32(s.profile.arch)
    if original.failure is not None:
        s.progress.warn(f"original FP32 ONNX export failed: {original.failure.message}")
        return None, 0
    contestants = {"chosen": s.artifact_of(chosen), "original_fp32": original.artifact}
    if best is not None and best["sha256"] != chosen["sha256"]:
        contestants["recipe_best"] = s.artifact_of(best)
    key = s.mcache.key("+".join(sorted(a.sha256 for a in contestants.values())) + f"/{rounds}", s.fingerprint,
                       what="interleaved")
    cached = s.mcache.get(key, None, s.progress.warn)
    measured = 0
    if cached is None:
        p90s: dict[str, list[float]] = {n: [] for n in contestants}
        with s.progress.step(f"{s.profile.name}: interleaved comparison, {rounds} rounds"):
            tr = open_transport(s.profile)
            try:
                for _ in range(rounds):
                    for name, art in contestants.items():
                        if s.stop.is_set():
                            return None, 0
                        p90s[name].append(benchmark(s.profile, art, None, transport=tr)["latency_ms"]["p90"])
            finally:
                tr.close()
        measured = rounds * len(contestants)
        cached = {"p90_ms": p90s}
        s.mcache.put(key, cached)
    med = {n: sorted(v)[len(v) // 2] for n, v in cached["p90_ms"].items()}
    if best is not None and "recipe_best" not in med:  # the search chose the recipe's own best artifact
        med["recipe_best"] = med["chosen"]
    return {"rounds": rounds, "p90_ms_per_round": cached["p90_ms"], "median_p90_ms": med,
            "chosen": chosen["id"], "recipe_best": best["id"] if best else None,
            "speedup_vs_original_fp32": round(med["original_fp32"] / med["chosen"], 3),
            "speedup_vs_recipe_best": round(med["recipe_best"] / med["chosen"], 3)
            if "recipe_best" in med else None}, measured
