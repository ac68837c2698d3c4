"""A signed bundle holds exactly what the run measured (issue 20, items 1-3): no link is packed, every file of an
artifact must keep the sha256 the run recorded for it (not only the main one), and nothing may follow the signed
archive in the file (``tar -i`` would unpack a second archive glued after it)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.phases.measure import artifact_record
from pipeline.phases.outcome import ExportOutcome
from pipeline.release.bundle import build_bundle
from pipeline.release.verify import verify_bundle
from targets.artifact import Artifact
from targets.errors import ConfigError
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run

FIGURES = {"onnx-fp32": (0.981, 0.110, 4), "openvino-int8": (0.978, 0.061, 1)}
TOP = "digits-local-1.0"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", figures=FIGURES)


@pytest.fixture
def bundle(run_dir: Path, tmp_path: Path) -> Path:
    return build_bundle(run_dir, "local", tmp_path / "dist", version="1.0")


def _bin(run_dir: Path) -> Path:
    return run_dir / "artifacts" / "digits.int8.bin"


def test_release_refuses_a_hard_linked_openvino_bin(run_dir, tmp_path):
    outside = tmp_path / "outside.bin"
    os.link(_bin(run_dir), outside)  # same bytes, same sha256: but another name can change them
    with pytest.raises(ConfigError, match="2 hard links"):
        build_bundle(run_dir, "local", tmp_path / "dist")
    assert not list((tmp_path / "dist").glob("*.tar.gz"))


def test_release_refuses_any_packed_file_that_is_a_symlink(run_dir, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "not for the bundle"}')
    bench = run_dir / "bench" / "onnx-fp32.json"
    bench.unlink()
    os.symlink(secret, bench)
    with pytest.raises(ConfigError, match="symbolic link"):
        build_bundle(run_dir, "local", tmp_path / "dist")


def test_release_refuses_a_same_size_bin_swapped_after_the_run(run_dir, tmp_path):
    data = _bin(run_dir).read_bytes()
    _bin(run_dir).write_bytes(data[::-1])  # same size, other weights
    with pytest.raises(ConfigError, match=r"digits\.int8\.bin: checksum differs from summary\.json"):
        build_bundle(run_dir, "local", tmp_path / "dist")


def test_release_of_a_summary_without_per_file_hashes_packs_single_file_artifacts_only(tmp_path):
    run_dir = make_run(tmp_path / "run", figures=FIGURES)
    summary = json.loads((run_dir / "summary.json").read_text())
    for art in summary["artifacts"]:
        art.pop("files", None)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for side in (run_dir / "artifacts").glob("*.json"):
        record = json.loads(side.read_text())
        record.pop("file_sha256", None)
        side.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"digits\.int8\.bin: summary\.json records no sha256"):
        build_bundle(run_dir, "local", tmp_path / "dist")
    summary["artifacts"] = [a for a in summary["artifacts"] if a["backend"] == "onnx"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert verify_bundle(build_bundle(run_dir, "local", tmp_path / "dist")) == []


def test_summary_record_carries_the_sha256_of_every_file(tmp_path):
    xml, binf = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>")
    binf.write_bytes(b"weights")
    art = Artifact.from_files(xml, backend="openvino", precision="int8", extra_files=[binf])
    rec = artifact_record("openvino-int8", ExportOutcome("openvino", "int8", art),
                          tmp_path, None)
    assert rec["sha256"] == art.sha256
    assert rec["files"] == {"m.xml": art.sha256, "m.bin": art.file_sha256["m.bin"]}
    assert len(set(rec["files"].values())) == 2


def test_manifest_records_the_measured_sha256_of_every_artifact_file(bundle):
    with tarfile.open(bundle, "r:gz") as tar:
        manifest = json.loads(tar.extractfile(f"{TOP}/manifest.json").read())
    ov = next(a for a in manifest["artifacts"] if a["backend"] == "openvino")
    assert sorted(ov["file_sha256"]) == sorted(ov["files"]) == ["models/openvino/digits.int8.bin",
                                                                "models/openvino/digits.int8.xml"]


def _tar_gz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_verify_refuses_a_second_gzipped_tar_appended_to_a_signed_bundle(bundle, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(bundle.read_bytes() + _tar_gz({f"{TOP}/models/onnx/digits.fp32.onnx": b"another model"}))
    out = subprocess.run(["tar", "-xzif", str(evil), "-C", str(tmp_path), "-O", f"{TOP}/models/onnx/digits.fp32.onnx"],
                         capture_output=True, check=False)
    assert b"another model" in out.stdout  # the attack works on tar: it must not pass verify
    problems = verify_bundle(evil)
    assert any("gzip stream" in p for p in problems), problems
    res = run_cli("verify", str(evil))
    assert res.returncode == 2 and "bundle failed verification" in res.stderr


def test_verify_refuses_data_after_the_tar_end_inside_the_gzip_stream(bundle, tmp_path):
    raw = gzip.decompress(bundle.read_bytes())
    extra = _tar_gz({f"{TOP}/x": b"hidden"})
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(gzip.compress(raw + gzip.decompress(extra), mtime=0))
    assert any("after the end of the signed archive" in p for p in verify_bundle(evil))


def test_verify_refuses_raw_bytes_after_the_gzip_stream(bundle, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(bundle.read_bytes() + b"\0")
    assert any("after the end of the gzip stream" in p for p in verify_bundle(evil))


def _resign(bundle: Path, dst: Path, edit) -> Path:
    """The bundle with its manifest edited by ``edit(manifest, files)``, re-listed, re-summed and re-signed (with the
    test signing key): all an attacker with a key of their own can do, short of a trusted signature."""
    import hashlib

    from pipeline.release.signing import sign_manifest

    with tarfile.open(bundle, "r:gz") as tar:
        files = {m.name.removeprefix(TOP + "/"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    manifest = json.loads(files["manifest.json"])
    edit(manifest, files)
    manifest["files"] = [{"path": rel, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                         for rel, d in sorted(files.items())
                         if rel not in ("manifest.json", "SHA256SUMS", "manifest.sig.json")]
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(d).hexdigest()}  {rel}\n" for rel, d in sorted(files.items())
                                  if rel not in ("SHA256SUMS", "manifest.sig.json")).encode()
    record, _ = sign_manifest(files["manifest.json"], None)
    files["manifest.sig.json"] = (json.dumps(record) + "\n").encode()
    dst.write_bytes(_tar_gz({f"{TOP}/{rel}": d for rel, d in sorted(files.items())}))
    return dst


def test_verify_refuses_an_artifact_file_other_than_the_one_the_run_measured(bundle, tmp_path):
    def swap_bin(manifest, files):
        files["models/openvino/digits.int8.bin"] = files["models/openvino/digits.int8.bin"][::-1]
    measured = next(a for a in json.loads(_manifest(bundle))["artifacts"] if a["backend"] == "openvino")["file_sha256"]
    problems = verify_bundle(_resign(bundle, tmp_path / "swapped.tar.gz", swap_bin))
    assert problems == [f"{TOP}/models/openvino/digits.int8.bin: differs from the file the run measured (sha256 "
                        f"{measured['models/openvino/digits.int8.bin'][:16]}...)"]


def test_verify_refuses_a_model_file_that_belongs_to_no_artifact(bundle, tmp_path):
    def add_model(manifest, files):
        files["models/onnx/extra.onnx"] = b"a model nobody measured"
    problems = verify_bundle(_resign(bundle, tmp_path / "extra.tar.gz", add_model))
    assert problems == [f"{TOP}/models/onnx/extra.onnx: a model file that belongs to no artifact of manifest.json"]


def _manifest(bundle: Path) -> bytes:
    with tarfile.open(bundle, "r:gz") as tar:
        return tar.extractfile(f"{TOP}/manifest.json").read()


def test_verify_accepts_the_bundle_release_wrote(bundle):
    assert verify_bundle(bundle) == []
