"""Reading a finished run folder (DESIGN §6): the one place the store, the report and the release agree on it.

After export only files and JSON records move between steps, so everything downstream of a run works from
``<run_dir>/summary.json`` and the files it names, never from live objects. Helpers here keep that reading uniform:
an artifact's name, its files on disk, and the rule that picks the best one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from targets import units
from targets.errors import ConfigError


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run folder; a missing or broken one is a ConfigError naming the file."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no summary.json in this folder",
                          hint="give the folder `edgepipe run ... --out DIR` wrote (it holds summary.json)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})", hint="re-run the pipeline to rewrite it") from exc
    if not isinstance(summary, dict) or summary.get("schema") != 1:
        raise ConfigError(f"{path}: expected a summary with \"schema\": 1",
                          hint="this edgepipe reads summary schema 1 (DESIGN §6)")
    missing = [k for k in ("recipe", "device", "run_id", "artifacts") if k not in summary]
    if missing:
        raise ConfigError(f"{path}: summary lacks {', '.join(missing)}", hint="re-run the pipeline to rewrite it")
    from pipeline.results.records import Summary

    Summary.of(summary, str(path))   # every field a reader relies on has its type, or one line names it
    return summary


def find_run_dirs(path: str | Path, device: str | None = None) -> list[Path]:
    """The folders holding a summary.json: the folder itself, or for a fleet run (``--device a --device b``) its
    per-device subfolders; ``device`` narrows a fleet run to one of them."""
    root = Path(path)
    if (root / "summary.json").is_file():
        return [root]
    subs = sorted(p.parent for p in root.glob("*/summary.json"))
    if device is not None:
        subs = [p for p in subs if p.name in (device, Path(device).stem)]
    if not subs:
        where = f" for device {device!r}" if device else ""
        raise ConfigError(f"{root}: no summary.json here or in its device subfolders{where}",
                          hint="give the folder `edgepipe run ... --out DIR` wrote")
    return subs


def recipe_file(run_dir: Path) -> Path | None:
    """``recipe.yaml`` as run: in the run folder, or one level up for a device subfolder of a fleet run."""
    for candidate in (run_dir / "recipe.yaml", run_dir.parent / "recipe.yaml"):
        if candidate.is_file():
            return candidate
    return None


def artifact_name(art: dict[str, Any]) -> str:
    return f"{art.get('backend', '?')}-{art.get('precision', '?')}"


def latency(art: dict[str, Any], key: str = "p90") -> float | None:
    value = (art.get("latency_ms") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def metric_value(rec: dict[str, Any]) -> float | None:
    """The task metric's value of a baseline, stage or artifact record (``metric.value``; ``accuracy`` in summaries
    written before task metrics existed)."""
    metric = rec.get("metric")
    if isinstance(metric, dict) and isinstance(metric.get("value"), (int, float)):
        return float(metric["value"])
    acc = rec.get("accuracy")
    return float(acc) if isinstance(acc, (int, float)) else None


def metric_info(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "higher_is_better", "unit"}`` of a run's metric (top-1 for older summaries)."""
    for rec in [summary.get("baseline") or {}, *(summary.get("artifacts") or [])]:
        if isinstance(rec.get("metric"), dict) and rec["metric"].get("name"):
            m = rec["metric"]
            return {"name": m["name"], "higher_is_better": m.get("higher_is_better", True),
                    "unit": m.get("unit", "fraction")}
    return {"name": "top1", "higher_is_better": True, "unit": "fraction"}


def metric_label(summary: dict[str, Any]) -> str:
    """How the run's metric is printed: "top-1", "mAP@0.5", "cosine", or a user metric's name."""
    from pipeline.recipe.metrics import label

    return label(metric_info(summary)["name"])


def is_usable(art: dict[str, Any]) -> bool:
    """Exported, measured and valid: the only artifacts that may be picked for a release."""
    return (not art.get("error") and art.get("valid") is True and metric_value(art) is not None
            and latency(art) is not None)


def rank_key(art: dict[str, Any]) -> tuple[int, float, float, str]:
    """Best first among artifacts that meet the gate: lowest p90 on the device, then fewest bytes, then the name (so
    ties never depend on list order). The metric is not a key: the gate already says which are good enough, and
    the promise is the *fastest* one that is (README, first line). A language model's speed is its decode rate:
    artifacts with a valid generation come first, by milliseconds per generated token (1 / decode tokens/s, p50),
    before any that cannot generate on the device (TFLite's static graph)."""
    from pipeline.results.generation import tokens_per_s

    size = art.get("bytes")
    tps = tokens_per_s(art)
    speed = (0, 1000.0 / tps) if tps else (1, latency(art) or float("inf"))
    return (*speed, float(size) if isinstance(size, (int, float)) else float("inf"), artifact_name(art))


def metric_key(art: dict[str, Any]) -> tuple[float, float, str]:
    """Best metric (in its direction), then lowest p90, then the name: the fallback order when no artifact meets the
    gate (a release with ``--allow-failed-gate``), where speed alone would pick a destroyed model."""
    value = metric_value(art) or 0.0
    higher = (art.get("metric") or {}).get("higher_is_better", True)
    return (-value if higher else value, latency(art) or float("inf"), artifact_name(art))


def passes_gate(art: dict[str, Any], verdicts: dict[str, dict[str, Any]] | None = None) -> bool:
    """The artifact's own gate verdict (``verdicts`` by name, else the one stored with it); an artifact with no
    verdict at all (a run without a gate) passes."""
    verdict = (verdicts or {}).get(artifact_name(art)) or art.get("gate")
    return not isinstance(verdict, dict) or verdict.get("passed") is not False


EQUAL_METRIC = 1e-3


def outranked(art: dict[str, Any], artifacts: list[dict[str, Any]]) -> bool:
    """The INT8 guard's rule: an int8/fp16 artifact measured slower than its FP32 parent is never picked over that
    parent when the parent is usable and its metric is as good, within ``EQUAL_METRIC`` (0.1 point: less than one
    sample of a typical eval split, so a quantization-noise "gain" does not buy a slower model its place)."""
    guard = art.get("int8_guard") or {}
    if not guard.get("slower"):
        return False
    parent = next((a for a in artifacts if artifact_name(a) == guard.get("parent")), None)
    if parent is None or not is_usable(parent):
        return False
    from pipeline.results.generation import tokens_per_s

    mine_tps, parent_tps = tokens_per_s(art), tokens_per_s(parent)
    if mine_tps and parent_tps and mine_tps > parent_tps:   # a language model ships for its decode rate: one that
        return False                                        # decodes faster is not outranked by a slower forward
    mine, theirs = metric_value(art), metric_value(parent)
    if mine is None or theirs is None:
        return False
    higher = (art.get("metric") or {}).get("higher_is_better", True)
    return theirs >= mine - EQUAL_METRIC if higher else theirs <= mine + EQUAL_METRIC


PICK_RULE = ("valid and measured, meets the gate on this device; lowest p90 latency (a language model: highest "
             "decode tokens/s), then fewest bytes, then name "
             "(an int8/fp16 slower than its as-good FP32 parent is never picked; with no artifact meeting the gate, "
             "best task metric first)")


def candidates(artifacts: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]] | None = None
               ) -> tuple[list[dict[str, Any]], Any]:
    """The artifacts a release may pick from and the key that orders them best first: the usable ones the INT8 guard
    does not outrank that meet the gate, fastest first; when none meets it, every usable one, best metric first."""
    usable = [a for a in artifacts if is_usable(a)]
    passing = [a for a in usable if passes_gate(a, verdicts)]
    pool, key = (passing, rank_key) if passing else (usable, metric_key)
    return [a for a in pool if not outranked(a, pool)], key   # a parent that fails the gate outranks nothing


def pick_best(artifacts: list[dict[str, Any]],
              verdicts: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The one artifact to ship on this device (PICK_RULE)."""
    pool, key = candidates(artifacts, verdicts)
    return min(pool, key=key) if pool else None


def artifact_files(run_dir: Path, art: dict[str, Any]) -> list[Path]:
    """Every file of an artifact (OpenVINO: .xml and .bin) located inside the run folder.

    The sidecar lists ``files`` as they were on the machine that exported them; only their names are trusted and
    they are looked up next to the main file, so a run folder that was moved or copied still resolves.
    """
    main = run_dir / art["file"]
    names = [main.name]
    sidecar = Path(str(main) + ".json")
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
            names += [Path(f).name for f in record.get("files", []) if Path(f).name not in names]
        except (OSError, json.JSONDecodeError):
            pass
    if main.suffix == ".xml" and main.with_suffix(".bin").name not in names:
        names.append(main.with_suffix(".bin").name)
    return [main.parent / n for n in names]


def now_iso() -> str:
    """The timestamp format of ``summary.json`` and the store: UTC, ISO 8601, whole seconds (what parse_time reads)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 (with or without zone; naive means UTC) -> aware datetime, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def metric_drop(baseline: dict[str, Any], rec: dict[str, Any], limits: Any = None) -> float | None:
    """How far below the original model a record is, in the gate's units (targets.units; in percent when the gate
    ``limits`` are relative, "5%"); None when either has no metric."""
    base, value = metric_value(baseline), metric_value(rec)
    if base is None or value is None:
        return None
    return units.drop(base, value, baseline.get("metric") or {"name": "accuracy"}, units.max_metric_drop(limits))


def pareto_front(points: list[tuple[str, float, float, float]], higher_is_better: bool = True) -> list[str]:
    """Ids of the points (id, metric, p90, bytes) no other point beats on all three (better metric, lower p90, smaller
    size) and strictly on one; sorted by p90. Identical points are all kept."""
    sign = 1.0 if higher_is_better else -1.0

    def dominates(a: tuple[str, float, float, float], b: tuple[str, float, float, float]) -> bool:
        ge = sign * a[1] >= sign * b[1] and a[2] <= b[2] and a[3] <= b[3]
        gt = sign * a[1] > sign * b[1] or a[2] < b[2] or a[3] < b[3]
        return ge and gt

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p[0] for p in sorted(front, key=lambda p: (p[2], p[0]))]
