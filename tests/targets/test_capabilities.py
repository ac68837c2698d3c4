"""The capability table is the one source the CLI, recipe validation, runner and tests read: keep it consistent."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

import targets
from targets import BACKENDS, CAPABILITIES, EXPORTERS, backend_for_file, get_exporter, parse_backend
from targets.errors import ConfigError, MissingDependencyError
from targets.runner import bench


def test_every_family_has_an_importable_exporter_with_the_adapter_signature():
    assert set(EXPORTERS) == set(CAPABILITIES)
    for family in CAPABILITIES:
        fn = get_exporter(family)
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        assert positional == ["model", "example_inputs", "calib", "cfg", "out_dir"]
        # beyond them only optional keywords: ``sources`` for a path with a declared dependency (targets.REQUIRES)
        assert all(p.default is None for p in params if p.kind is p.KEYWORD_ONLY)


def test_suffixes_are_unique_and_map_back_to_their_family():
    suffixes = [cap["suffix"] for cap in CAPABILITIES.values()]
    assert len(set(suffixes)) == len(suffixes)
    for family, cap in CAPABILITIES.items():
        assert backend_for_file(f"m.int8{cap['suffix']}") == family
        assert bench.SUFFIXES[cap["suffix"]] == family  # the runner dispatches on the same suffixes


def test_backends_are_exactly_family_precision_pairs_of_the_table():
    expected = {f"{f}-{p}" for f, cap in CAPABILITIES.items() for p in cap["precisions"]}
    assert set(BACKENDS) == expected and len(BACKENDS) == len(expected)
    for name in BACKENDS:
        family, precision = parse_backend(name)
        assert precision in CAPABILITIES[family]["precisions"]
    for cap in CAPABILITIES.values():
        assert "int8" in cap["precisions"] and "fp32" in cap["precisions"]


def test_runtime_and_export_modules_of_the_table_are_installed_here():
    for cap in CAPABILITIES.values():
        importlib.import_module(cap["runtime"])
        importlib.import_module(cap["export_module"])


def test_an_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="openvino-int8"):
        parse_backend("tflite-int4")


def test_a_missing_exporter_module_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(targets.EXPORTERS, "openvino", "edgepipe_no_such_module:export")
    with pytest.raises(MissingDependencyError, match=r"edgepipe\[openvino\]") as info:
        get_exporter("openvino")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("family", "runtime", "extra"), [("openvino", "openvino", "openvino"),
                                                          ("tflite", "litert_torch", "tflite")])
def test_an_uninstalled_runtime_makes_get_exporter_name_the_extra(monkeypatch, family, runtime, extra):
    module = EXPORTERS[family].split(":")[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, runtime, None)  # what Python does for a package that is not installed
    with pytest.raises(MissingDependencyError, match=rf"{runtime} is not installed.*edgepipe\[{extra}\]"):
        get_exporter(family)
