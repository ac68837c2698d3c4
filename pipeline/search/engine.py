"""``edgepipe search``: the fastest artifact that meets the gate, found by measuring candidates on the board itself.

Strategy: successive halving over backends (Jamieson & Talwalkar 2016), with the compression settings as the resource.
Rung 0 measures every backend of the space at the hand-written recipe's own settings (the reference a search must
beat). Each later rung keeps the fastest 1/eta backends (by their fastest p90 that meets the gate) and gives them eta
times more settings to try, most compressed first, until one backend is left, which gets the rest. Why this and not a
black-box optimizer: the space is a small categorical product with a strong structure (the backend decides most of
the latency, the compression settings most of the metric), which halving exploits directly, deterministically (a
re-run takes the same path through the caches), with no extra dependency. Two rules save device time without
guessing: a candidate whose host-side check already fails the gate is not measured, and of candidates that run the
same graph (they differ only in calibration or QAT weights) only the one with the best host metric is measured.

Every measurement is the normal runner under the profile's validity rules, cached by (artifact sha256, device
fingerprint, runtime versions); ``search.json`` is rewritten after every candidate, so Ctrl-C keeps what was measured
and a re-run resumes through the caches. An INT8 candidate slower than its float sibling on that board is marked and
never chosen (its sibling is measured when needed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import pipeline
from pipeline.recipe.config import Recipe, load_recipe
from pipeline.recipe.search_config import SearchConfig
from pipeline.results.rundir import human_bytes, metric_value
from pipeline.search.cache import MeasurementCache, cache_root
from pipeline.search.device import DeviceSearch
from pipeline.search.host import HostWork
from pipeline.search.report import write_search_report
from pipeline.search.space import expand, recipe_candidates
from pipeline.ui.console import third_party_to_log
from pipeline.ui.progress import Progress
from targets.errors import ConfigError, EdgeError, GateError
from targets.profiles import DeviceProfile, load_profile


# ------------------------------------------------------------------------------------------------ the command
def search(recipe_path: str | Path, devices: list[str], out: Path | None = None, overrides: list[str] | None = None,
           profile_overrides: dict[str, Any] | None = None, cache: str | Path | None = None,
           stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Search every device (concurrently for a fleet); returns one ``search.json`` record per device."""
    recipe = load_recipe(recipe_path, overrides)
    cfg = recipe.search or SearchConfig()
    profiles = [load_profile(d, profile_overrides) for d in devices]
    if len({p.name for p in profiles}) != len(profiles):
        raise ConfigError("a device is named twice", hint="give each --device once")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Path(out) if out else Path("runs") / f"{recipe.name}-search-{stamp}"
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as quiet:
        if stream is None:  # the CLI: third-party console noise goes to search.log, our lines to the console
            stream = quiet.enter_context(third_party_to_log(root / "search.log"))
        return _search(recipe, cfg, profiles, root, Progress(root / "search.log", stream), cache)


def _search(recipe: Recipe, cfg: SearchConfig, profiles: list[DeviceProfile], root: Path, progress: Progress,
            cache: str | Path | None) -> list[dict[str, Any]]:
    croot = cache_root(cache)
    stop = threading.Event()
    try:
        progress.say(f"edgepipe {pipeline.__version__} search: {recipe.name} -> {', '.join(p.name for p in profiles)}"
                     f" (folder {root}, cache {croot})")
        host = HostWork(recipe, croot, root, progress)
        deadline = time.monotonic() + cfg.budget.minutes * 60 if cfg.budget.minutes else None
        searches = []
        for p in profiles:
            grid = expand(cfg, recipe.stages, list(recipe.backends or p.backends))
            by_id = {c.id: c for cells in grid["cells"].values() for c in cells.values()}
            refs = [by_id.get(c.id, c) for c in recipe_candidates(recipe.stages, grid["backends"])]
            n = len({c.id for cells in grid["cells"].values() for c in cells.values()})
            progress.say(f"[{p.name}] space: {n} distinct candidates ({len(grid['points'])} settings x "
                         f"{len(grid['backends'])} backends); budget {cfg.budget.candidates} measurements, "
                         f"{cfg.budget.minutes} min; strategy {cfg.strategy} (eta {cfg.eta})")
            searches.append(DeviceSearch(p, host, cfg.model_copy(deep=True), grid, refs,
                                         root if len(profiles) == 1 else root / p.name, MeasurementCache(croot),
                                         progress, stop, deadline))
        results, errors = _run_all(searches, stop)
        if results:
            report = write_search_report(results, root / "search.html")
            for r in results:
                progress.say(format_result(r))
            if len(results) > 1:
                progress.say(fleet_line(results))
            progress.say(f"report: {report}")
    finally:
        progress.close()
    if errors:
        raise errors[0]
    missing = [r["device"] for r in results if r.get("chosen") is None]
    if missing:
        raise GateError(f"no candidate met the gate on {', '.join(missing)}",
                        hint="every figure is in search.json; widen search.space or relax `gate:`")
    return results


def _run_all(searches: list[DeviceSearch], stop: threading.Event) -> tuple[list[dict[str, Any]], list[EdgeError]]:
    if len(searches) == 1:
        return [searches[0].run()], []
    results, errors = [], []
    with ThreadPoolExecutor(max_workers=len(searches)) as pool:
        futures = [pool.submit(s.run) for s in searches]
        try:
            for f in futures:
                try:
                    results.append(f.result())
                except EdgeError as exc:
                    errors.append(exc)
        except KeyboardInterrupt:
            stop.set()  # each board finishes its current candidate, writes search.json, and stops
            for f in futures:
                f.exception()
            raise
    return results, errors


def format_result(r: dict[str, Any]) -> str:
    c = next((c for c in r["candidates"] if c["id"] == r.get("chosen")), None)
    counts, cmp = r["counts"], r.get("comparison") or {}
    lines = [f"{r['recipe']} on {r['device']}: {r['status']}; {counts['device_measurements']} device measurements "
             f"({counts['measured_now']} new, {counts['from_cache']} from the cache) of {counts['exhaustive']} "
             f"candidates; Pareto front {len(r['front'])} points"]
    if c is None:
        lines.append("  no candidate meets the gate")
    else:
        name = (c.get("metric") or {}).get("name", "accuracy")
        lines.append(f"  chosen: {c['label']}: p90 {c['latency_ms']['p90']} ms, {name} {metric_value(c)}, "
                     f"{human_bytes(c.get('bytes'))} -> {r.get('chosen_recipe')}")
    if cmp:
        med = cmp["median_p90_ms"]
        lines.append(f"  interleaved ({cmp['rounds']} rounds, median p90): chosen {med['chosen']} ms, recipe as "
                     f"written {med.get('recipe_best')} ms, original FP32 ONNX {med['original_fp32']} ms "
                     f"({cmp['speedup_vs_original_fp32']}x faster than the original)")
    return "\n".join(lines)


def fleet_line(results: list[dict[str, Any]]) -> str:
    """Whether the boards agree on the best candidate: the reason to search each board rather than one."""
    picks = {r["device"]: next((c["label"] for c in r["candidates"] if c["id"] == r.get("chosen")), None)
             for r in results}
    if len(set(picks.values())) > 1:
        return "the best choice differs per board: " + "; ".join(f"{d}: {p}" for d, p in picks.items())
    return f"every board chose the same candidate: {next(iter(picks.values()))}"
