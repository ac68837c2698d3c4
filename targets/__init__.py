"""Lower layer: model formats and devices. Never imports ``pipeline`` (the flow is one-way).

``CAPABILITIES`` is the one table the CLI, the recipe validation, the runner dispatch and the tests read: a backend
family, the precisions it can produce, its file suffix, the extra that installs it and the runtime that runs it.
``int4`` is weight-only (4-bit weights, float activations: ``targets.weight_only``); TFLite has no int4 here.
``EXPORTERS`` maps a family to its ``module:function`` and is resolved lazily, so importing ``targets`` never pulls in
onnxruntime, openvino or litert.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from targets.errors import ConfigError, MissingDependencyError

CAPABILITIES: dict[str, dict[str, Any]] = {
    "onnx": {"precisions": ("fp32", "fp16", "int8", "int4"), "suffix": ".onnx", "extra": None,
             "runtime": "onnxruntime", "export_module": "onnxscript"},
    "openvino": {"precisions": ("fp32", "fp16", "int8", "int4"), "suffix": ".xml", "extra": "openvino",
                 "runtime": "openvino", "export_module": "openvino"},
    "tflite": {"precisions": ("fp32", "fp16", "int8"), "suffix": ".tflite", "extra": "tflite",
               "runtime": "ai_edge_litert", "export_module": "litert_torch"},
}

EXPORTERS: dict[str, str] = {
    "onnx": "targets.export_onnx:export",
    "openvino": "targets.export_openvino:export",
    "tflite": "targets.export_tflite:export",
}

# Exporter paths that read another backend's artifact instead of the model: (backend, ExportConfig.ov_int8_from) ->
# the backend whose artifact they need (passed as ``sources={name: Artifact}``).
REQUIRES: dict[tuple[str, str], str] = {("openvino-int8", "onnx-qdq"): "onnx-int8"}

BACKENDS: tuple[str, ...] = tuple(f"{fam}-{p}" for fam, cap in CAPABILITIES.items() for p in cap["precisions"])


def parse_backend(name: str) -> tuple[str, str]:
    """``"onnx-int8"`` -> ``("onnx", "int8")``; an unknown name lists the valid ones."""
    family, _, precision = name.partition("-")
    cap = CAPABILITIES.get(family)
    if cap is None or precision not in cap["precisions"]:
        raise ConfigError(f"unknown backend {name!r}", hint=f"choose from: {', '.join(BACKENDS)}")
    return family, precision


def requires(backend: str, ov_int8_from: str = "model") -> list[str]:
    """The backends whose artifacts this backend's exporter path reads (empty for a path from the model)."""
    dep = REQUIRES.get((backend, ov_int8_from))
    return [dep] if dep else []


def export_order(backends: list[str], ov_int8_from: str = "model") -> list[str]:
    """``backends`` with every dependency before the backend that reads it (list order otherwise kept); a dependency
    that was not asked for is added, so it is exported (and checked) but never benchmarked."""
    out: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in out:
            return
        if name in path:
            raise ConfigError(f"export dependency cycle: {' -> '.join((*path, name))}")
        for dep in requires(name, ov_int8_from):
            visit(dep, (*path, name))
        out.append(name)

    for name in backends:
        visit(name, ())
    return out


def backend_for_file(path: str | Path) -> str:
    suffix = Path(path).suffix
    for family, cap in CAPABILITIES.items():
        if cap["suffix"] == suffix:
            return family
    raise ConfigError(f"{path}: unknown model file type {suffix!r}",
                      hint="expected one of " + ", ".join(c["suffix"] for c in CAPABILITIES.values()))


def get_exporter(family: str) -> Callable[..., Any]:
    """Import the exporter of one family; a missing runtime says which extra to install."""
    module_name, func = EXPORTERS[family].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = CAPABILITIES[family]["extra"]
        raise MissingDependencyError(exc.name or family, extra, purpose=f"the {family} backend") from exc
    return getattr(module, func)


def get_simulator(family: str) -> Callable[..., Any] | None:
    """The exporter module's ``simulate`` (the INT8 program run in torch, for a fast mixed-precision search), or None
    where the runtime is cheap enough to export every try (ONNX, OpenVINO)."""
    return getattr(importlib.import_module(EXPORTERS[family].split(":")[0]), "simulate", None)


def installed(module: str) -> str | None:
    """The installed version of the distribution that provides ``module`` ("unknown" without one), or None when the
    module is not importable here; found without importing it (openvino or litert take seconds to import)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    for dist in importlib.metadata.packages_distributions().get(module, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
