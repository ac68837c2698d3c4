"""Task metrics, computed on the host from raw model outputs (the runner returns outputs, never a score).

The protocol (README "User metrics"): a metric is an object with ``update(outputs, targets)`` called once per batch
(``outputs`` one numpy array per model output, samples first -- or what ``task.postprocess`` made of them),
``compute() -> {name: value}``, ``primary`` (the name of the value that is *the* metric) and ``higher_is_better``.
An optional ``reference = True`` means "compare with the original model": ``targets`` are then the original model's
outputs on the same inputs instead of the data's targets (``cosine`` and ``mse`` work this way, so they need no
labels). ``unit = "fraction"`` makes the gate count drops in points (x100) as it does for top-1 and mAP.

COCO-style box mAP goes through pycocotools (the reference implementation), never a hand-written matcher.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from targets.errors import ConfigError, EdgeError


class TopK:
    """Top-1 and top-k of the first output against integer labels (``top5`` also reports ``top1``)."""

    unit = "fraction"
    higher_is_better = True
    reference = False

    def __init__(self, k: int = 1) -> None:
        self.k = k
        self.primary = f"top{k}"
        self.correct = {1: 0, k: 0}
        self.total = 0

    def update(self, outputs: list[np.ndarray], targets: Any) -> None:
        logits = np.asarray(outputs[0]).reshape(len(outputs[0]), -1)
        labels = np.asarray(targets).reshape(-1)
        if labels.shape[0] != logits.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{self.primary} needs one integer class label per sample (got targets of dtype "
                             f"{labels.dtype}, shape {list(labels.shape)})")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"{self.primary}: labels span [{labels.min()}, {labels.max()}] but the first output has "
                             f"{logits.shape[1]} classes: the metric does not fit this output")
        if logits.shape[1] < self.k:
            raise ValueError(f"top{self.k} needs at least {self.k} classes; the first output has {logits.shape[1]}")
        order = np.argsort(-logits, axis=1, kind="stable")
        for k in self.correct:
            self.correct[k] += int((order[:, :k] == labels[:, None]).any(axis=1).sum())
        self.total += len(labels)

    def compute(self) -> dict[str, float]:
        return {f"top{k}": c / max(self.total, 1) for k, c in self.correct.items()}


class _Reference:
    """Per-output agreement with the original model's outputs (targets are those outputs)."""

    unit = "raw"
    reference = True

    def __init__(self) -> None:
        self.sums: list[float] = []
        self.n = 0

    def _per_sample(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update(self, outputs: list[np.ndarray], targets: Any) -> None:
        if len(outputs) != len(targets):
            raise ValueError(f"{self.primary}: {len(outputs)} outputs but {len(targets)} reference outputs")
        if not self.sums:
            self.sums = [0.0] * len(outputs)
        for i, (o, r) in enumerate(zip(outputs, targets, strict=True)):
            o2 = np.asarray(o, dtype=np.float64).reshape(len(o), -1)
            r2 = np.asarray(r, dtype=np.float64).reshape(len(r), -1)
            if o2.shape != r2.shape:
                raise ValueError(f"{self.primary}: output {i} has shape {list(o2.shape)}, the original's "
                                 f"{list(r2.shape)}")
            self.sums[i] += float(self._per_sample(o2, r2).sum())
        self.n += len(outputs[0])

    def compute(self) -> dict[str, float]:
        per = [s / max(self.n, 1) for s in self.sums]
        # the primary value is the worst output: one broken head must not hide behind a good one
        worst = min(per) if self.higher_is_better else max(per)
        return {self.primary: worst, **{f"{self.primary}[{i}]": v for i, v in enumerate(per)}}


class Cosine(_Reference):
    primary = "cosine"
    higher_is_better = True

    def _per_sample(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        both_zero = (np.linalg.norm(out, axis=1) == 0) & (np.linalg.norm(ref, axis=1) == 0)
        return np.where(den > 0, (out * ref).sum(1) / np.where(den > 0, den, 1), both_zero.astype(np.float64))


class MSE(_Reference):
    primary = "mse"
    higher_is_better = False

    def _per_sample(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return ((out - ref) ** 2).mean(axis=1)


class Perplexity:
    """Language modelling (task ``lm``): exp of the mean next-token cross-entropy over every eval position, from
    logits ``(N, T, V)`` (the first output) and next-token ids ``(N, T)``. Lower is better; unit ``ratio`` (1 is a
    model that is always sure and right, V a uniform guess over the vocabulary).

    ``next_token_agreement`` (the share of positions whose top-1 id equals the original model's) is reported beside
    it as a diagnostic when the original's outputs are at hand (``update_reference``): it says how much of the
    original's behaviour a compressed model kept, which perplexity alone (an average) can hide."""

    primary = "perplexity"
    unit = "ratio"
    higher_is_better = False
    reference = False

    def __init__(self) -> None:
        self.nll = 0.0
        self.count = 0
        self.agree = 0
        self.compared = 0

    @staticmethod
    def _logits(outputs: list[np.ndarray]) -> np.ndarray:
        logits = np.asarray(outputs[0])
        if logits.ndim != 3:
            raise ValueError(f"perplexity needs logits (samples, positions, vocabulary); the first output has shape "
                             f"{list(logits.shape)}")
        return logits

    def update(self, outputs: list[np.ndarray], targets: Any) -> None:
        logits = self._logits(outputs)
        ids = np.asarray(targets)
        if ids.shape != logits.shape[:2] or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"perplexity needs integer next-token ids of shape {list(logits.shape[:2])} (got "
                             f"{ids.dtype} {list(ids.shape)})")
        if ids.size and (ids.min() < 0 or ids.max() >= logits.shape[2]):
            raise ValueError(f"perplexity: target ids span [{ids.min()}, {ids.max()}] but the vocabulary has "
                             f"{logits.shape[2]} entries")
        z = logits.astype(np.float64)
        top = z.max(axis=2, keepdims=True)
        log_norm = np.log(np.exp(z - top).sum(axis=2)) + top[..., 0]
        picked = np.take_along_axis(z, ids[..., None].astype(np.int64), axis=2)[..., 0]
        self.nll += float((log_norm - picked).sum())
        self.count += int(ids.size)

    def update_reference(self, outputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
        mine, theirs = self._logits(outputs), np.asarray(reference[0])
        if mine.shape == theirs.shape:
            self.agree += int((mine.argmax(axis=2) == theirs.argmax(axis=2)).sum())
            self.compared += int(mine.shape[0] * mine.shape[1])

    def compute(self) -> dict[str, float]:
        mean = self.nll / max(self.count, 1)
        out = {"perplexity": math.exp(min(mean, 700.0)), "cross_entropy": mean}
        if self.compared:
            out["next_token_agreement"] = self.agree / self.compared
        return out


class BoxMAP:
    """COCO box mAP with pycocotools. Predictions per image: (K, 6) ``x1, y1, x2, y2, score, class`` (what a
    ``postprocess`` returns; raw outputs are taken as (N, K, 6) with rows of score <= 0 as padding). Targets per
    image: (M, 5) ``x1, y1, x2, y2, class``."""

    unit = "fraction"
    higher_is_better = True
    reference = False

    def __init__(self, iou: str = "50") -> None:
        self.iou = iou
        self.primary = "map50" if iou == "50" else "map50_95"
        self.preds: list[np.ndarray] = []
        self.gts: list[np.ndarray] = []

    def update(self, outputs: Any, targets: Any) -> None:
        dets = outputs[0] if isinstance(outputs, list) and len(outputs) == 1 and np.ndim(outputs[0]) == 3 \
            else outputs
        for d, t in zip(dets, targets, strict=True):
            d = np.asarray(d, dtype=np.float64).reshape(-1, 6)
            t = np.asarray(t, dtype=np.float64).reshape(-1, 5)
            self.preds.append(d[d[:, 4] > 0])
            self.gts.append(t)

    def compute(self) -> dict[str, float]:
        import contextlib
        import io

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        classes = sorted({int(c) for g in self.gts for c in g[:, 4]} | {int(c) for p in self.preds for c in p[:, 5]})
        gt = {"images": [{"id": i + 1} for i in range(len(self.gts))],
              "categories": [{"id": c + 1} for c in classes], "annotations": []}
        for i, g in enumerate(self.gts):
            for x1, y1, x2, y2, c in g:
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                          "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                          "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
        dets = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
                for i, p in enumerate(self.preds) for x1, y1, x2, y2, s, c in p]
        if not gt["annotations"]:
            raise ValueError(f"{self.primary}: the targets hold no boxes")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            if not dets:
                return {"map50_95": 0.0, "map50": 0.0}
            ev = COCOeval(coco, coco.loadRes(dets), "bbox")
            ev.params.maxDets = [1, 10, max(100, max(len(p) for p in self.preds))]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {"map50_95": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


BUILTINS: dict[str, Callable[[], Any]] = {
    "top1": lambda: TopK(1), "top5": lambda: TopK(5), "map50": lambda: BoxMAP("50"),
    "map50_95": lambda: BoxMAP("50_95"), "cosine": Cosine, "mse": MSE, "perplexity": Perplexity,
}
LABELS = {"top1": "top-1", "top5": "top-5", "map50": "mAP@0.5", "map50_95": "mAP@0.5:0.95", "cosine": "cosine",
          "mse": "MSE", "perplexity": "perplexity"}


def label(name: str) -> str:
    """How a metric is printed ("top-1", "mAP@0.5", or the user metric's own name)."""
    return LABELS.get(name, name)


@dataclass
class MetricSpec:
    """A resolved ``task.metric`` (+ postprocess): makes fresh metric objects and scores outputs."""

    name: str                                   # the primary value's name
    factory: Callable[[], Any]
    higher_is_better: bool
    unit: str                                   # "fraction" (gate in points), "ratio" or "raw"
    reference: bool
    postprocess: Callable[[list[np.ndarray]], Any] | None = None
    source: str = ""                            # digest of the code that computes it (user module or this file)
    spec: str = ""                              # what the recipe says (``module:callable``), for messages

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two scores comparable: part of every cache key that stores a score."""
        return {"name": self.name, "higher_is_better": self.higher_is_better, "unit": self.unit,
                "reference": self.reference, "source": self.source}

    @property
    def what(self) -> str:
        """``'mod:fn' (acc)`` for a user metric, ``'top1'`` for a built-in: how messages name the metric."""
        return f"{self.spec!r} ({self.name})" if self.spec and self.spec != self.name else repr(self.name)

    @property
    def classification(self) -> bool:
        return self.name in ("top1", "top5")

    @property
    def language_model(self) -> bool:
        """Task ``lm``: next-token logits (N, T, V) against next-token ids (N, T)."""
        return self.name == "perplexity"

    def score(self, outputs: list[np.ndarray], targets: Any, reference: list[np.ndarray] | None = None,
              batch: int = 256) -> dict[str, Any]:
        """``{"name", "value", "higher_is_better", "unit", "values"}`` over all samples, in batches."""
        n = len(outputs[0])
        truth = reference if self.reference else targets
        if truth is None:
            raise ValueError(f"{self.name} needs {'the original outputs' if self.reference else 'targets'}")
        try:
            metric = self.factory()
            for i in range(0, n, batch):
                outs = [o[i:i + batch] for o in outputs]
                if self.postprocess is not None:
                    outs = self.postprocess(outs)
                tgt = [t[i:i + batch] for t in truth] if self.reference else truth[i:i + batch]
                metric.update(outs, tgt)
                if reference is not None and hasattr(metric, "update_reference"):   # diagnostics vs the original
                    metric.update_reference(outs, [r[i:i + batch] for r in reference])
            computed = metric.compute()
        except EdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code: one line naming the metric, never a traceback
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise MetricError(f"task.metric {self.what} failed: {type(exc).__name__}: {first}",
                              hint="fix the metric (or task.postprocess) so it can score these outputs") from None
        values = finite_values(self.what, computed)
        if self.name not in values:
            raise MetricError(f"task.metric {self.what}: compute() returned {sorted(values)}, which lacks its "
                              f"primary {self.name!r}", hint="compute() must return {primary: value, ...}")
        return {"name": self.name, "value": values[self.name], "higher_is_better": self.higher_is_better,
                "unit": self.unit, "values": values}


class MetricError(ConfigError, ValueError):
    """A metric that raised, or returned something that is not a finite number: a figure nobody can gate on (a
    ValueError too, for callers that caught the metric's own ValueErrors before)."""


def finite_values(name: str, computed: Any) -> dict[str, float]:
    """``compute()``'s mapping as finite floats (``name`` as messages show it). Anything else -- a string, None,
    NaN, Inf, not a mapping -- is a MetricError naming the metric and the value: NaN compares False with every
    limit, so it would pass a gate."""
    if not isinstance(computed, dict):
        raise MetricError(f"task.metric {name}: compute() returned {type(computed).__name__}, expected a mapping "
                          "{name: number}", hint="compute() must return {primary: value, ...}")
    out: dict[str, float] = {}
    for key, value in computed.items():
        try:   # numbers, numpy and torch scalars; never a string that happens to parse ("0.9")
            if isinstance(value, (str, bytes)) or value is None:
                raise TypeError
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise MetricError(f"task.metric {name}: compute() returned {key!r} = {str(value)[:40]!r} "
                              f"({type(value).__name__}), not a number",
                              hint="return a float for every value") from None
        if not math.isfinite(number):
            raise MetricError(f"task.metric {name}: {key!r} is {number} (not a finite number): a NaN or infinite "
                              "metric cannot pass or fail a gate", hint="make the metric return a finite number "
                                                                         "(check for a division by zero or an "
                                                                         "empty eval set)")
        out[str(key)] = number
    return out


def resolve_metric(metric: str, base_dir: Path, postprocess: str | None = None, where: str = "task") -> MetricSpec:
    """A built-in name or ``module:callable`` (a class or a factory returning a metric object), checked for the
    protocol; a ConfigError names the key and what is missing."""
    from pipeline.recipe.usercode import import_factory, watching

    post = import_factory(postprocess, base_dir) if postprocess else None
    post_src = _source_digest(post) if post is not None else ""
    if metric in BUILTINS:
        obj = BUILTINS[metric]()
        return MetricSpec(obj.primary, BUILTINS[metric], obj.higher_is_better, obj.unit, obj.reference, post,
                          source=f"{metric}:{_source_digest(BUILTINS[metric])}:{post_src}")
    factory = import_factory(metric, base_dir)
    try:
        with watching(f"{where}.metric {metric!r}"):
            obj = factory()
    except Exception as exc:  # noqa: BLE001 - user code: one line naming the key
        raise ConfigError(f"{where}.metric: calling {metric!r} failed: {type(exc).__name__}: {exc}") from None
    missing = [a for a in ("update", "compute", "primary", "higher_is_better") if not hasattr(obj, a)]
    if missing:
        raise ConfigError(f"{where}.metric: {metric!r} lacks {', '.join(missing)}",
                          hint="a metric has update(outputs, targets), compute() -> {name: value}, primary, "
                               "higher_is_better (see the README)")
    return MetricSpec(str(obj.primary), factory, bool(obj.higher_is_better), str(getattr(obj, "unit", "raw")),
                      bool(getattr(obj, "reference", False)), post, spec=metric,
                      source=f"{metric}:{_source_digest(factory)}:{post_src}")


def _source_digest(obj: Any) -> str:
    """sha256 of the file that defines ``obj``: an edited user metric (or postprocess) is a different metric."""
    import inspect

    from targets.fingerprint import file_digest

    try:
        path = inspect.getsourcefile(obj) or inspect.getfile(obj)
        return file_digest(path)[:16]
    except (TypeError, OSError):
        return "unknown"


def chance_level(spec: MetricSpec, outputs: list[np.ndarray]) -> float | None:
    """What guessing scores on a classification metric (1/classes, k/classes); None for other metrics."""
    if not spec.classification:
        return None
    classes = int(np.prod(outputs[0].shape[1:]))
    return min(1.0, (5 if spec.name == "top5" else 1) / max(classes, 1))
