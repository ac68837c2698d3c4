"""Only an artifact's own regular files travel to a device, each with the sha256 it had when it was made (issue 20,
items 1 and 2): a symlinked or hard-linked companion is refused, and so is one swapped after the export."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from targets.artifact import Artifact
from targets.artifact_trust import artifact_for_bench
from targets.device import benchmark
from targets.errors import ConfigError
from targets.profiles import load_profile
from targets.transport import LocalTransport

pytestmark = pytest.mark.onnx


@pytest.fixture
def ext_onnx(tiny, tmp_path: Path) -> Path:
    """The tiny model saved with its weights in ``m.onnx.data`` next to it (ONNX external data)."""
    proto = onnx.load(tiny.artifact("onnx", "fp32").path)
    onnx.save(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return tmp_path / "m.onnx"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "id_ed25519"
    path.parent.mkdir()
    path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- not for the board")
    return path


def _profile(tmp_path: Path) -> object:
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\npython: current\nworkdir: {tmp_path / 'wd'}\nbackends: [onnx-fp32]\n"
                    "bench: {warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5}\n")
    return load_profile(str(prof))


def test_bench_refuses_onnx_external_data_that_is_a_symlink(ext_onnx, secret, tmp_path):
    data = ext_onnx.with_name("m.onnx.data")
    data.unlink()
    os.symlink(secret, data)
    with pytest.raises(ConfigError, match=r"m\.onnx\.data: is a symbolic link"):
        artifact_for_bench(ext_onnx)


def test_bench_refuses_an_openvino_bin_that_is_a_symlink(secret, tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    os.symlink(secret, tmp_path / "m.bin")
    with pytest.raises(ConfigError, match=r"m\.bin: is a symbolic link"):
        artifact_for_bench(xml)


def test_benchmark_sends_no_file_a_symlink_points_to(ext_onnx, secret, tmp_path):
    extra = ext_onnx.with_name("x.data")
    extra.write_bytes(b"placeholder")
    art = Artifact.from_files(ext_onnx, backend="onnx", precision="fp32", extra_files=[extra])
    extra.unlink()
    os.symlink(secret, extra)  # replaced by a link after the export
    with pytest.raises(ConfigError, match="symbolic link"):
        benchmark(_profile(tmp_path), art)


def test_benchmark_refuses_a_hard_linked_companion(ext_onnx, tmp_path):
    art = Artifact.from_files(ext_onnx, backend="onnx", precision="fp32",
                              extra_files=[ext_onnx.with_name("m.onnx.data")])
    os.link(ext_onnx.with_name("m.onnx.data"), tmp_path / "elsewhere.data")
    with pytest.raises(ConfigError, match="2 hard links"):
        benchmark(_profile(tmp_path), art)


def test_local_put_refuses_a_file_whose_folder_is_a_link_out_of_its_root(tmp_path, secret):
    art_dir = tmp_path / "art"
    art_dir.mkdir()
    os.symlink(secret.parent, art_dir / "sub")
    with pytest.raises(ConfigError, match="outside"):
        LocalTransport().put(art_dir / "sub" / secret.name, str(tmp_path / "copy"), root=art_dir)
    assert not (tmp_path / "copy").exists()


def test_artifact_records_every_files_sha256_and_older_records_still_load(ext_onnx):
    art = Artifact.from_files(ext_onnx, backend="onnx", precision="fp32",
                              extra_files=[ext_onnx.with_name("m.onnx.data")])
    assert set(art.to_dict()["file_sha256"]) == {"m.onnx", "m.onnx.data"}
    assert art.file_sha256["m.onnx"] == art.sha256
    old = {k: v for k, v in art.to_dict().items() if k != "file_sha256"}
    assert Artifact.from_dict(old).file_sha256 == {}


def _swap_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    path.write_bytes(bytes(data))


def test_bench_refuses_external_data_swapped_after_the_export(ext_onnx):
    Artifact.from_files(ext_onnx, backend="onnx", precision="fp32",
                        extra_files=[ext_onnx.with_name("m.onnx.data")]).save()
    _swap_same_size(ext_onnx.with_name("m.onnx.data"))
    with pytest.raises(ConfigError, match=r"m\.onnx\.data: sha256 .* differs"):
        artifact_for_bench(ext_onnx)


def test_benchmark_refuses_a_companion_swapped_after_the_export_before_sending_it(ext_onnx, tmp_path):
    art = Artifact.from_files(ext_onnx, backend="onnx", precision="fp32",
                              extra_files=[ext_onnx.with_name("m.onnx.data")])
    art.save()
    _swap_same_size(ext_onnx.with_name("m.onnx.data"))
    with pytest.raises(ConfigError, match="changed since"):
        benchmark(_profile(tmp_path), Artifact.load(ext_onnx))
