"""Accuracy-aware mixed precision: quantize everything, rank layer groups by how much the metric recovers when that
group alone stays float (measured in the backend's own runtime on a bounded subset), then return the most sensitive
groups to float, greedily and cumulatively (neighbours first), until the drop against the FP32 parent is within
``max_drop``.

Why our own loop rather than each toolkit's: it is the same for ONNX Runtime, OpenVINO and LiteRT (NNCF's
``quantize_with_accuracy_control`` exists for OpenVINO only, reverts OpenVINO ops whose names do not map back to the
user's modules once a convolution is fused with its batch norm, and exposes no ranking), and it builds on the one
``keep_float`` mechanism every exporter already honours (module paths), so what it chose can be written into a recipe
and reproduced by hand. The metric is a plain function (outputs -> points, higher is better): top-1 accuracy on the
labels by default, top-1 agreement with the parent without labels; a task metric plugs in the same way.

Groups: the model's modules, split from the root downwards (largest first) until there are ``max_groups`` of them; a
module with a single weighted layer (conv + bn + act) is never split, so every exporter can name it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from targets.artifact import Artifact
from targets.errors import ExportError
from targets.export_config import ExportConfig
from targets.runner import bench
from targets.schema import StrictModel

ScoreFn = Callable[[list[np.ndarray]], float]      # outputs -> metric in points (x100 for fractions), higher = better
Inputs = dict[str, np.ndarray]
Exporter = Callable[..., Artifact]
# (model, example, calib, cfg) -> run(inputs, batch_axes): outputs samples first, as bench.predict returns them
Simulator = Callable[..., Callable[[Inputs, list[int] | None], list[np.ndarray]]]
_WEIGHTED = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear, torch.nn.ConvTranspose2d)


class MixedPrecisionConfig(StrictModel):
    max_drop: float = Field(default=1.0, ge=0)     # points of the metric below the FP32 parent
    samples: int = Field(default=300, ge=16)       # inputs the ranking and the search are measured on
    max_groups: int = Field(default=12, ge=1)      # candidate layer groups ranked
    always_rank: bool = False                      # rank (and record) even when all-INT8 already meets max_drop
    max_tries: int = Field(default=16, ge=1)       # exports after the ranking stops adding candidates per step


def top1_scorer(reference: list[np.ndarray], labels: np.ndarray | None = None) -> tuple[str, ScoreFn]:
    """Default metric: top-1 accuracy (points) of the first output on the labels; without labels, top-1 agreement
    with the parent. The orchestrator passes the task's own metric instead."""
    def top(outs: list[np.ndarray]) -> np.ndarray:
        return outs[0].reshape(len(outs[0]), -1).argmax(1)

    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        return "top1", lambda outs: float((top(outs) == y).mean() * 100.0)
    ref = top(reference)
    return "top1_agreement", lambda outs: float((top(outs) == ref).mean() * 100.0)


def _weighted(module: torch.nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, _WEIGHTED))


def layer_groups(model: torch.nn.Module, max_groups: int) -> list[str]:
    """Module paths (``named_modules`` style) covering every weighted layer, at most ``max_groups`` of them (more only
    when the root's own children already exceed it), in model order."""
    named = dict(model.named_modules())
    order = {name: i for i, name in enumerate(named)}

    def children(path: str) -> list[str]:
        prefix = f"{path}." if path else ""
        return [prefix + n for n, c in named[path].named_children() if _weighted(c)]

    groups = children("")
    while len(groups) < max_groups:
        splittable = [g for g in groups if _weighted(named[g]) > 1 and len(children(g)) > 0]
        if not splittable:
            break
        biggest = max(splittable, key=lambda g: (_weighted(named[g]), -order[g]))
        parts = children(biggest)
        if len(groups) - 1 + len(parts) > max_groups and len(groups) > 1:
            break
        i = groups.index(biggest)
        groups[i:i + 1] = parts
    return sorted(groups, key=order.__getitem__)


class _Trial:
    """Exports and scores one keep_float set in the backend's runtime; remembers every result."""

    def __init__(self, exporter: Exporter, model: torch.nn.Module, example: tuple[torch.Tensor, ...],
                 calib: Any, cfg: ExportConfig, x: Inputs, score: ScoreFn, workdir: Path,
                 simulate: Simulator | None = None) -> None:
        self.exporter, self.model, self.example, self.calib, self.cfg = exporter, model, example, calib, cfg
        self.x, self.score, self.workdir, self.simulate = x, score, workdir, simulate
        self.count = 0
        self.batch_axes: list[int] | None = None   # the outputs' batch axes (samples first, as the reference is)
        self.artifacts: dict[tuple[str, ...], tuple[Artifact, float]] = {}
        self.simulated: dict[tuple[str, ...], float] = {}

    def __call__(self, keep: list[str]) -> float:
        """The score of ``keep`` in float: simulated where the backend offers it (ranking and search), else exported
        and run in the backend's runtime."""
        key = tuple(sorted(set(self.cfg.keep_float) | set(keep)))
        if self.simulate is None:
            return self.runtime(keep)
        if key not in self.simulated:
            self.count += 1
            cfg = self.cfg.model_copy(update={"keep_float": list(key)})
            run = self.simulate(self.model, self.example, self.calib, cfg)
            self.simulated[key] = self.score(run(self.x, self.batch_axes))
        return self.simulated[key]

    def runtime(self, keep: list[str]) -> float:
        key = tuple(sorted(set(self.cfg.keep_float) | set(keep)))
        if key in self.artifacts:
            return self.artifacts[key][1]
        self.count += 1
        cfg = self.cfg.model_copy(update={"keep_float": list(key)})
        art = self.exporter(self.model, self.example, self.calib, cfg, self.workdir / f"t{self.count}")
        out = bench.predict(bench.load(art.path, art.backend, threads=1, input_names=list(self.x)), self.x,
                            self.batch_axes)
        self.artifacts[key] = (art, self.score(out))
        return self.artifacts[key][1]

    def adopt(self, keep: list[str], out_dir: Path) -> Artifact:
        """Move the artifact already exported for ``keep`` into ``out_dir`` (the .bin before the .xml, each with an
        atomic rename) instead of exporting it once more."""
        art, _ = self.artifacts[tuple(sorted(set(self.cfg.keep_float) | set(keep)))]
        files = [Path(f) for f in art.files or [art.path]]
        main = Path(art.path)
        for f in sorted(files, key=lambda f: f == main):
            f.replace(out_dir / f.name)
        moved = Artifact.from_dict({**art.to_dict(), "path": str(out_dir / main.name),
                                    "files": [str(out_dir / f.name) for f in files]})
        Path(art.sidecar()).unlink(missing_ok=True)
        return moved


def _revert_until_met(trial: _Trial, ranking: list[dict[str, Any]], order: list[str], base: float,
                      fp32_score: float, mp: MixedPrecisionConfig, metric: str, backend: str,
                      log: Callable[[str], None]) -> list[str]:
    """Greedy and cumulative: start from the most sensitive group; each step tries adding each model-order neighbour
    of the groups already float plus the next group of the ranking, and keeps the best, until the drop is within the
    limit. Why not one at a time down the ranking: sensitivities interact (an outlier channel between two groups is
    fixed only when both its producer and its consumers are float, and either alone gains nothing), and neighbours
    are where such pairs sit. A few tries a step (one once ``mp.max_tries`` is spent); ExportError if never."""
    met = [r for r in ranking if fp32_score - r["score"] <= mp.max_drop]
    if met:   # one group alone is enough: the most sensitive of those (the ranking is sorted by gain)
        log(f"{backend}: 1 group float ({met[0]['group']}): drop {fp32_score - met[0]['score']:.2f} pt")
        return [met[0]["group"]]
    if not ranking:
        reverted, score = [], base
    else:
        reverted, score = [ranking[0]["group"]], ranking[0]["score"]
    best: tuple[float, list[str]] = (score, list(reverted))
    index = {g: i for i, g in enumerate(order)}
    while len(reverted) < len(ranking):
        rest = [r["group"] for r in ranking if r["group"] not in reverted]
        near = [g for g in rest if any(abs(index[g] - index[r]) == 1 for r in reverted)]
        candidates = list(dict.fromkeys(near + rest[:1]))
        candidates = candidates[:max(1, mp.max_tries - trial.count)]
        score, group = max(((trial([*reverted, g]), g) for g in candidates), key=lambda t: t[0])
        reverted.append(group)
        best = max(best, (score, list(reverted)), key=lambda b: (b[0], -len(b[1])))
        log(f"{backend}: {len(reverted)} group(s) float ({', '.join(reverted)}): drop {fp32_score - score:.2f} pt")
        if fp32_score - score <= mp.max_drop:
            return reverted
    raise ExportError(backend.split("-")[0], f"no number of float layer groups meets max_drop {mp.max_drop:g}: "
                      f"all-INT8 drops {fp32_score - base:.2f} pt of {metric}; the best of {trial.count} tries "
                      f"({len(best[1])} of {len(ranking)} groups float: {', '.join(best[1]) or 'none'}) still drops "
                      f"{fp32_score - best[0]:.2f} pt",
                      hint="raise quantize.max_drop, use quantize.mode: qat, or drop this INT8 backend")


def search(family: str, exporter: Exporter, model: torch.nn.Module, example: tuple[torch.Tensor, ...],
           calib: Any, cfg: ExportConfig, out_dir: Path, x: Inputs | np.ndarray,
           reference: list[np.ndarray] | np.ndarray,
           mp: MixedPrecisionConfig, score: tuple[str, ScoreFn] | None = None, labels: np.ndarray | None = None,
           log: Callable[[str], None] = print, simulate: Simulator | None = None,
           batch_axes: list[int] | None = None) -> Artifact:
    """Export ``cfg`` (INT8) with the fewest float layer groups that keep the metric within ``mp.max_drop`` of the
    FP32 parent (``reference`` = its outputs on ``x``); the ranking and the choice go into the artifact's metadata.

    ``simulate`` (the exporter module's own, where it has one: TFLite) scores tries without a full conversion; the
    all-INT8 score and the final choice are still measured in the backend's runtime, and a choice that misses there
    raises. Raises ExportError when even every group in float misses the limit, saying by how much.
    """
    backend = f"{family}-int8"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)   # its trial folder lives inside: a fresh --out has no artifacts/ yet
    feeds = {"input": x} if isinstance(x, np.ndarray) else x
    refs = [reference] if isinstance(reference, np.ndarray) else list(reference)
    n = min(bench.count(feeds), mp.samples)
    feeds = {k: np.ascontiguousarray(v[:n]) for k, v in feeds.items()}
    reference = [r[:n] for r in refs]
    metric, fn = score or top1_scorer(reference, None if labels is None else labels[:n])
    fp32_score = fn(reference)
    start = time.perf_counter()
    record: dict[str, Any] = {"metric": metric, "samples": n, "max_drop": mp.max_drop, "fp32_score": fp32_score,
                              "measured_in": "the backend's own runtime"}
    with tempfile.TemporaryDirectory(prefix=".mixed-", dir=out_dir) as tmp:
        trial = _Trial(exporter, model, example, calib, cfg, feeds, fn, Path(tmp), simulate)
        trial.batch_axes = batch_axes
        if simulate is not None:
            record["measured_in"] = "ranking and search simulated in torch (the exporter's own quantizer); all-INT8 " \
                                    "and the final choice in the backend's runtime"
        base = trial.runtime([])
        record["int8_score"] = base
        drop = fp32_score - base
        log(f"{backend}: all-INT8 {metric} {base:.2f} vs FP32 {fp32_score:.2f} (drop {drop:.2f} pt, limit "
            f"{mp.max_drop:g}) on {n} samples")
        reverted: list[str] = []
        if drop > mp.max_drop or mp.always_rank:
            rank_base = trial([])   # the same scale the ranking is measured on (simulated where it is)
            if simulate is not None:
                log(f"{backend}: all-INT8 simulated {rank_base:.2f} vs runtime {base:.2f}")
            groups = layer_groups(model, mp.max_groups)
            ranking = []
            for g in groups:
                try:
                    s = trial([g])
                except ExportError as exc:  # a group this backend cannot name stays out of the running
                    log(f"{backend}: group {g} skipped ({exc.message})")
                    continue
                ranking.append({"group": g, "score": s, "gain": s - rank_base})
            ranking.sort(key=lambda r: -r["gain"])
            record["ranking"] = ranking
            log(f"{backend}: sensitivity ({metric} gained when the group alone stays float): "
                + ", ".join(f"{r['group']} {r['gain']:+.2f}" for r in ranking))
            if drop > mp.max_drop:
                reverted = _revert_until_met(trial, ranking, groups, base, fp32_score, mp, metric, backend,
                                             log)
        final = trial.runtime(reverted)
        if simulate is not None and fp32_score - final > mp.max_drop and drop > mp.max_drop:
            # the simulation and the runtime round differently: go on down the ranking, measured in the runtime
            for r in record["ranking"]:
                if fp32_score - final <= mp.max_drop:
                    break
                if r["group"] not in reverted:
                    reverted = [*reverted, r["group"]]
                    final = trial.runtime(reverted)
                    log(f"{backend}: {len(reverted)} group(s) float ({', '.join(reverted)}): drop "
                        f"{fp32_score - final:.2f} pt in the runtime")
        record.update(reverted=reverted, tries=trial.count, seconds=round(time.perf_counter() - start, 1), met=True,
                      final_score=final)
        record["drop"] = fp32_score - final
        if record["drop"] > mp.max_drop:
            raise ExportError(family, f"the layer groups chosen in simulation ({', '.join(reverted) or 'none'}) drop "
                              f"{record['drop']:.2f} pt of {metric} in the runtime, over max_drop {mp.max_drop:g}",
                              hint="raise quantize.max_drop, keep more layers float (keep_float), or use "
                                   "quantize.mode: qat")
        art = trial.adopt(reverted, out_dir)
    log(f"{backend}: kept in float: {', '.join(reverted) or 'nothing'}; {metric} {record['final_score']:.2f} "
        f"(drop {record['drop']:.2f} pt) after {record['tries']} tries in {record['seconds']:.0f}s")
    art.metadata["mixed_precision"] = record
    art.save()
    return art
