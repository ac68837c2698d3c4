"""``edgepipe bench`` and an untrusted sidecar: only the artifact's own files travel, and its sha256 must match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from targets.artifact import sha256_file
from targets.artifact_trust import artifact_for_bench
from targets.errors import ConfigError

pytestmark = pytest.mark.onnx


@pytest.fixture
def onnx_file(tiny, tmp_path: Path) -> Path:
    src = Path(tiny.artifact("onnx", "fp32").path)
    dst = tmp_path / "m.onnx"
    shutil.copy(src, dst)
    return dst


def test_artifact_for_bench_ships_only_the_model_when_the_sidecar_names_a_private_key(onnx_file, tmp_path):
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    other = tmp_path / "other.onnx"
    shutil.copy(onnx_file, other)
    onnx_file.with_name("m.onnx.json").write_text(json.dumps({
        "path": str(other), "backend": "onnx", "precision": "fp32", "sha256": sha256_file(onnx_file), "bytes": 1,
        "files": [str(onnx_file), str(secret), "~/.ssh/id_ed25519"]}))
    art = artifact_for_bench(onnx_file)
    assert art.path == str(onnx_file) and art.files == [str(onnx_file)]
    assert art.sha256 == sha256_file(onnx_file)


def test_artifact_for_bench_refuses_a_sidecar_whose_sha256_is_another_file(onnx_file):
    onnx_file.with_name("m.onnx.json").write_text(json.dumps({"sha256": "0" * 64, "backend": "onnx"}))
    with pytest.raises(ConfigError, match="does not match m.onnx"):
        artifact_for_bench(onnx_file)


def test_artifact_for_bench_reports_a_malformed_sidecar_in_one_line(onnx_file):
    onnx_file.with_name("m.onnx.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable artifact record"):
        artifact_for_bench(onnx_file)


def test_artifact_for_bench_names_a_missing_openvino_bin_and_missing_onnx_external_data(tmp_path, tiny):
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    with pytest.raises(ConfigError, match=r"m\.bin are not next to the \.xml"):
        artifact_for_bench(xml)
    import onnx

    proto = onnx.load(tiny.artifact("onnx", "fp32").path)
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    assert artifact_for_bench(tmp_path / "ext.onnx").files == [str(tmp_path / "ext.onnx"),
                                                               str(tmp_path / "ext.onnx.data")]
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ConfigError, match="external data file ext.onnx.data"):
        artifact_for_bench(tmp_path / "ext.onnx")
