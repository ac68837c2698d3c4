"""A ``.pt2`` program is untrusted input: nothing pickled inside it may run (issue 15, items 1 and 17)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.recipe.config import load_recipe
from pipeline.recipe.model import load_model
from pipeline.recipe.program_archive import check_program_archive
from targets.errors import ConfigError
from tests.pipeline.test_model import DATA, RECIPE, _tiny

MARK = "edgepipe-pwned"


class _Payload:
    """Unpickling this calls os.system: the canary file appears if anything ran it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def _program(tmp_path: Path) -> Path:
    batch = torch.export.Dim.DYNAMIC
    ep = torch.export.export(_tiny().eval(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            tail = info.filename.split("/", 1)[1]
            zout.writestr(info, replace.get(tail, zin.read(info)))
    return dst


def _pickled_sample_inputs(canary: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(((torch.zeros(1, 1, 8, 8),), {"x": _Payload(canary)}), buf)
    return buf.getvalue()


def test_load_model_refuses_a_program_whose_sample_inputs_hold_code_and_never_runs_it(write_recipe, tmp_path):
    canary = tmp_path / "ran"
    good = _program(tmp_path)
    _rewrite(good, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": _pickled_sample_inputs(canary)})
    recipe = load_recipe(write_recipe(RECIPE.format(model="program: evil.pt2"), {"data.py": DATA}))
    with pytest.raises(ConfigError, match="pickled") as info:
        load_model(recipe)
    assert "evil.pt2" in str(info.value)
    assert not canary.exists()


def test_check_program_archive_refuses_weights_marked_use_pickle(tmp_path):
    good = _program(tmp_path)
    with zipfile.ZipFile(good) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = z.read(name).replace(b'"use_pickle": false', b'"use_pickle": true', 1)
    evil = _rewrite(good, tmp_path / "w.pt2", {"data/weights/model_weights_config.json": config})
    with pytest.raises(ConfigError, match="use_pickle"):
        check_program_archive(evil)


def test_check_program_archive_refuses_custom_objects_and_native_code(tmp_path):
    good = _program(tmp_path)
    custom = b'{"config": {"obj": {"path_name": "custom_obj_0", "is_param": false, "use_pickle": false}}}'
    evil = _rewrite(good, tmp_path / "c.pt2", {"data/constants/model_constants_config.json": custom})
    with pytest.raises(ConfigError, match="custom"):
        check_program_archive(evil)
    with zipfile.ZipFile(tmp_path / "so.pt2", "w") as z, zipfile.ZipFile(good) as zin:
        for info in zin.infolist():
            z.writestr(info, zin.read(info))
        z.writestr(zin.namelist()[0].split("/")[0] + "/data/aotinductor/model/evil.so", b"\x7fELF")
    with pytest.raises(ConfigError, match="aotinductor"):
        check_program_archive(tmp_path / "so.pt2")


def test_check_program_archive_refuses_a_plain_pickle_and_accepts_a_real_program(tmp_path):
    (tmp_path / "p.pt2").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConfigError, match="not a torch.export"):
        check_program_archive(tmp_path / "p.pt2")
    check_program_archive(_program(tmp_path))  # no error


def test_load_model_from_program_can_be_put_in_eval_mode_and_run(write_recipe, tmp_path):
    _program(tmp_path)
    recipe = load_recipe(write_recipe(RECIPE.format(model="program: m.pt2"), {"data.py": DATA}))
    model = load_model(recipe)
    model.eval()
    model.train(False)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(model(x), _tiny().eval()(x), atol=1e-5)


FAST_LOCAL = """
name: fast-local
connection: {transport: local}
python: current
workdir: WORKDIR
backends: [onnx-fp32]
runtime: {threads: 1}
bench: {warmup: 5, min_iterations: 30, min_seconds: 0.05, max_seconds: 5}
"""


@pytest.mark.onnx
def test_run_a_program_recipe_through_ptq_export_and_bench(write_recipe, tmp_path):
    from pipeline.run import run

    _program(tmp_path)
    (tmp_path / "fast.yaml").write_text(FAST_LOCAL.replace("WORKDIR", str(tmp_path / "work")))
    extra = ("    stages: {quantize: {mode: ptq, calib_samples: 8}}\n    backends: [onnx-fp32, onnx-int8]\n"
             "    gate: {max_accuracy_drop: 100}\n")
    recipe = write_recipe(RECIPE.format(model="program: m.pt2") + extra, {"data.py": DATA})
    [summary] = run(recipe, [str(tmp_path / "fast.yaml")], tmp_path / "out", stream=io.StringIO())
    assert [a["name"] for a in summary["artifacts"]] == ["onnx-fp32", "onnx-int8"]
    assert all(a["latency_ms"]["n"] >= 30 and "error" not in a for a in summary["artifacts"])
    assert summary["status"] == "complete"
