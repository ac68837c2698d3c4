"""The candidates a recipe's ``search:`` section spans (its schema: pipeline/recipe/search_config.py).

A space maps ``stage.field`` (any field of the distill, prune or quantize config, e.g. ``prune.ratio``,
``prune.round_to``, ``quantize.calibration``) or ``backends`` to the values to try. One candidate is one point of the
product: the recipe's stages with those values set, exported to one backend. Points that must give the same artifact
are folded into one before anything runs, so the count of candidates is the count of distinct artifacts:

* ``prune.ratio: 0`` removes the prune stage (the other prune knobs then change nothing);
* ``quantize.mode: none`` removes the quantize stage and pairs only with float backends (INT8 needs PTQ or QAT);
* PTQ does not change the model (the exporters quantize), so PTQ with a float backend is the same as ``none``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.recipe.search_config import STAGE_CONFIGS, STAGE_ORDER, SearchConfig
from targets import parse_backend

# Quantize knobs that change only weights or scales, never the graph a runtime executes: two candidates that differ
# only in these have the same latency and size by construction (see Candidate.graph_key).
WEIGHT_ONLY_QUANT = {"mode", "calibration", "calib_samples", "epochs", "lr", "batch_size", "seed", "temperature",
                     "alpha", "bn_train", "simulate", "max_drop"}


def _stage_dicts(stages: Any) -> dict[str, dict[str, Any] | None]:
    return {n: (getattr(stages, n).model_dump(mode="json") if getattr(stages, n) is not None else None)
            for n in STAGE_ORDER}


@dataclass
class Candidate:
    """One point of the space: normalized stage configs (None = stage left out) and one backend."""

    stages: dict[str, dict[str, Any] | None]
    backend: str
    settings: dict[str, Any] = field(default_factory=dict)   # the space's own keys and the value taken

    @property
    def variant_key(self) -> str:
        """What the host phase depends on: the stages (shared by every backend of this variant)."""
        return _digest(self.stages)

    @property
    def id(self) -> str:
        return f"{self.backend}-{_digest([self.stages, self.backend])[:10]}"

    @property
    def precision(self) -> str:
        return parse_backend(self.backend)[1]

    @property
    def graph_key(self) -> str:
        """Equal for candidates whose runtimes execute the same graph (same architecture, same backend)."""
        q = self.stages.get("quantize")
        graph_q = {k: v for k, v in (q or {}).items() if k not in WEIGHT_ONLY_QUANT} if self.precision == "int8" \
            else None
        return _digest([self.stages.get("distill"), self.stages.get("prune"), graph_q, self.backend])

    @property
    def aggressiveness(self) -> tuple[float, int]:
        """Sort key, most compressed first: a higher prune ratio, then INT8 before float."""
        prune = self.stages.get("prune") or {}
        return (-float(prune.get("ratio", 0.0)), 0 if self.precision == "int8" else 1)

    def label(self) -> str:
        parts = []
        for key, value in self.settings.items():
            if key != "backends":
                parts.append(f"{key.split('.')[-1]} {value}")
        return " · ".join(parts + [self.backend])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label(), "config": dict(self.settings), "stages": self.stages,
                "backend": self.backend, "precision": self.precision}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Quantize knobs that reach only some backends (README "The stages"): ORT's and NNCF's calibrators read
#: ``calibration`` (TFLite's PT2E observers do not), NNCF alone does bias correction. Elsewhere they are reset to
#: their default, so points that differ only in them fold into one candidate there.
QUANT_APPLIES = {"calibration": {"onnx-int8", "openvino-int8"}, "bias_correction": {"openvino-int8"}}


def applies(key: str, backend: str) -> bool:
    """Whether a space key (``stage.field`` or ``backends``) can change the artifact of ``backend``."""
    stage, _, fld = key.partition(".")
    if stage != "quantize" or key == "backends":
        return True
    if fld in QUANT_APPLIES:
        return backend in QUANT_APPLIES[fld]
    return True


def _normalize(stages: dict[str, dict[str, Any] | None], backend: str) -> dict[str, dict[str, Any] | None] | None:
    """Fold equivalent points together; None when the pair is not a combination (INT8 without quantization)."""
    out = dict(stages)
    q = out.get("quantize")
    if q is not None:
        defaults = STAGE_CONFIGS["quantize"]().model_dump(mode="json")
        out["quantize"] = {k: (defaults[k] if not applies(f"quantize.{k}", backend) else v) for k, v in q.items()}
    prune = out.get("prune")
    if prune is not None and float(prune.get("ratio", 0)) <= 0:
        out["prune"] = None
    precision = parse_backend(backend)[1]
    q = out.get("quantize")
    if q is not None and q.get("mode") == "none":
        out["quantize"] = q = None
    if precision == "int8" and q is None:
        return None
    if precision != "int8" and q is not None and q.get("mode") == "ptq":
        out["quantize"] = None
    return out


def expand(search: SearchConfig, recipe_stages: Any, default_backends: list[str]) -> dict[str, Any]:
    """The space as a grid: ``points`` (settings without the backend, most compressed first), ``cells`` (point ->
    backend -> Candidate; a cell is absent where the pair is not a combination) and ``backends``. Two cells that give
    the same artifact hold the same Candidate, so counting distinct ids counts distinct artifacts."""
    import itertools

    keys = [k for k in search.space if k != "backends"]
    backends = list(search.space.get("backends") or default_backends)
    base = _stage_dicts(recipe_stages)
    seen: dict[str, Candidate] = {}
    cells: dict[str, dict[str, Candidate]] = {}
    ratios: dict[str, float] = {}
    for values in itertools.product(*(search.space[k] for k in keys)):
        settings = dict(zip(keys, values, strict=True))
        stages = {n: (dict(d) if d is not None else None) for n, d in base.items()}
        for key, value in settings.items():
            stage, _, fld = key.partition(".")
            if stages[stage] is None:
                stages[stage] = STAGE_CONFIGS[stage]().model_dump(mode="json")
            stages[stage][fld] = value
        stages = {n: (STAGE_CONFIGS[n].model_validate(d).model_dump(mode="json") if d and d.get("mode") != "none"
                      else d) for n, d in stages.items()}
        point = json.dumps(settings, sort_keys=True, default=str)
        ratios[point] = float((stages.get("prune") or {}).get("ratio", 0.0))
        cells[point] = {}
        for backend in backends:
            norm = _normalize(stages, backend)
            if norm is not None:
                cand = Candidate(norm, backend, {**settings, "backends": backend})
                cells[point][backend] = seen.setdefault(cand.id, cand)
    points = sorted(cells, key=lambda p: -ratios[p])  # stable: ties keep the space's own order
    return {"points": points, "cells": cells, "backends": backends, "first": covering(points)}


def covering(points: list[str]) -> list[str]:
    """A small set of points (greedy set cover, in the space's order) that holds every value of every key at least
    once: the first rung of the halving measures these on every backend, so each dimension of the space reaches
    every backend it applies to before any backend is dropped (issue 21: ``quantize.calibration`` reached one
    backend only)."""
    def pairs(p: str) -> set[tuple[str, str]]:
        return {(k, json.dumps(v, sort_keys=True, default=str)) for k, v in json.loads(p).items()}
    wanted = set().union(*(pairs(p) for p in points)) if points else set()
    chosen: list[str] = points[:1]
    wanted -= pairs(points[0]) if points else set()
    while wanted:
        best = max((p for p in points if p not in chosen), key=lambda p: len(pairs(p) & wanted))
        chosen.append(best)
        wanted -= pairs(best)
    return [p for p in points if p in chosen]


def recipe_candidates(recipe_stages: Any, backends: list[str]) -> list[Candidate]:
    """The hand-written recipe's own point for each backend (the reference a search must beat)."""
    out = []
    for backend in backends:
        norm = _normalize(_stage_dicts(recipe_stages), backend)
        if norm is not None:
            out.append(Candidate(norm, backend, {"recipe": "as written", "backends": backend}))
    return out


def candidate_stages(recipe_stages: Any, cand: Candidate) -> Any:
    """The recipe's ``Stages`` object for this candidate (validated configs, stages left out as None)."""
    return type(recipe_stages)(**{n: (STAGE_CONFIGS[n].model_validate(d) if d is not None else None)
                                  for n, d in cand.stages.items()})
