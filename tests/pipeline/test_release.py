from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.release.bundle import build_bundle, check_bundle, verify_bundle
from pipeline.results.rundir import PICK_RULE
from targets.errors import ConfigError, GateError
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run

# onnx-fp32 is the fastest here (p50 0.050 ms): the pick is the fastest artifact that meets the gate
PASSING = {"onnx-fp32": (0.981, 0.050, 4), "onnx-int8": (0.978, 0.061, 1), "openvino-int8": (0.975, 0.052, 1)}


@pytest.fixture
def passing_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "passing", figures=PASSING)


@pytest.fixture
def bundle(passing_run: Path, tmp_path: Path) -> Path:
    return build_bundle(passing_run, "local", tmp_path / "dist", version="1.2.0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def _rewrite(src: Path, dst: Path, *, change: str | None = None, drop: str | None = None,
             add: list[tarfile.TarInfo] | None = None) -> Path:
    """Copy a bundle entry by entry, tampering on the way (what an attacker or a broken copy would do)."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(drop or "\0"):
                continue
            if change and m.name.endswith(change):
                data = data + b"# tampered\n"
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        for extra in add or []:
            payload = b"evil\n" if extra.isreg() else None
            if payload is not None:
                extra.size = len(payload)
            tout.addfile(extra, io.BytesIO(payload) if payload is not None else None)
    return dst


def test_build_bundle_twice_gives_identical_sha256(passing_run: Path, tmp_path: Path) -> None:
    a = build_bundle(passing_run, "local", tmp_path / "a", version="1.2.0")
    b = build_bundle(passing_run, "local", tmp_path / "b", version="1.2.0")
    assert a.name == b.name == "digits-local-1.2.0.tar.gz"
    assert _sha(a) == _sha(b)
    with tarfile.open(a, "r:gz") as tar:
        infos = tar.getmembers()
    assert [m.name for m in infos] == sorted(m.name for m in infos)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in infos} == {(0, 0, "", "", 0o644)}
    assert {m.mtime for m in infos} == {1795449790}  # the run's finish time, 2026-11-23T16:03:10Z
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    assert not list((tmp_path / "a").glob(".*.part"))


def test_build_bundle_uses_source_date_epoch(passing_run: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with tarfile.open(build_bundle(passing_run, None, tmp_path / "d"), "r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


def test_build_bundle_holds_best_artifact_per_family_and_manifest(bundle: Path) -> None:
    files = _members(bundle)
    top = "digits-local-1.2.0"
    assert {n.removeprefix(top + "/") for n in files} == {
        "manifest.json", "SHA256SUMS", "manifest.sig.json", "MODEL_CARD.md", "example.py", "bench.py", "summary.json",
        "recipe.yaml", "models/onnx/digits.fp32.onnx", "models/openvino/digits.int8.xml",
        "models/openvino/digits.int8.bin", "bench/onnx-fp32.json", "bench/openvino-int8.json"}
    manifest = json.loads(files[f"{top}/manifest.json"])
    assert manifest["pick"] == {"overall": "onnx-fp32", "per_family": {"onnx": "onnx-fp32",
                                                                       "openvino": "openvino-int8"},
                                "rule": PICK_RULE}
    listed = {f["path"]: f for f in manifest["files"]}
    for path, data in files.items():
        rel = path.removeprefix(top + "/")
        if rel not in ("manifest.json", "SHA256SUMS", "manifest.sig.json"):
            assert listed[rel]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["gate"]["passed"] is True and manifest["gate"]["allow_failed_gate"] is False
    assert [s["name"] for s in manifest["lineage"]["stages"]] == ["distill", "prune", "quantize"]
    assert manifest["lineage"]["artifacts"]["openvino-int8"]["parent"] == "stages/quantize"
    assert manifest["tool_versions"]["onnxruntime"] == "1.32.0"
    card = files[f"{top}/MODEL_CARD.md"].decode()
    assert "onnx-fp32 (pick)" in card and "0.981" in card and "onnxruntime 1.32.0" in card
    assert files[f"{top}/bench.py"] == (Path(__file__).parents[2] / "targets/runner/bench.py").read_bytes()
    assert verify_bundle(bundle) == []
    assert check_bundle(bundle)["version"] == "1.2.0"


def test_build_bundle_refuses_failed_gate_with_exit_3(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError) as info:
        build_bundle(run_dir, "local", tmp_path / "dist")
    assert info.value.exit_code == 3
    assert "tflite-int8" in str(info.value) and "--allow-failed-gate" in str(info.value)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_build_bundle_records_allow_failed_gate_in_manifest(run_dir: Path, tmp_path: Path) -> None:
    path = build_bundle(run_dir, "local", tmp_path / "dist", allow_failed_gate=True)
    manifest = check_bundle(path)
    assert manifest["gate"]["passed"] is False
    assert manifest["gate"]["released_despite_failure"] is True
    assert any("tflite-int8" in f for f in manifest["gate"]["failures"])
    assert path.name == "digits-local-local-20261123T160000Z.tar.gz"  # version: the run id minus "<recipe>-"


def test_build_bundle_rejects_wrong_device_and_tampered_artifact(passing_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="measured on device 'local', not 'rpi5'"):
        build_bundle(passing_run, "rpi5", tmp_path / "dist")
    (passing_run / "artifacts" / "digits.fp32.onnx").write_bytes(b"swapped")
    with pytest.raises(ConfigError, match="checksum differs from summary.json"):
        build_bundle(passing_run, "local", tmp_path / "dist")


@pytest.mark.parametrize("tamper, expected", [
    ({"change": "MODEL_CARD.md"}, "MODEL_CARD.md: size"),
    ({"change": "digits.fp32.onnx"}, "models/onnx/digits.fp32.onnx: size"),
    ({"drop": "bench/onnx-fp32.json"}, "bench/onnx-fp32.json: removed"),
    ({"add": "reg"}, "digits-local-1.2.0/extra.sh: added"),
    ({"add": "dotdot"}, "digits-local-1.2.0/../../evil.sh: path traversal"),
    ({"add": "absolute"}, "/tmp/evil.sh: absolute path"),
    ({"add": "symlink"}, "digits-local-1.2.0/passwd: symbolic link pointing outside the bundle (-> /etc/passwd)"),
    ({"add": "device"}, "digits-local-1.2.0/null: device or FIFO entry"),
    ({"add": "duplicate"}, "digits-local-1.2.0/example.py: appears more than once"),
])
def test_verify_bundle_reports_tampering(bundle: Path, tmp_path: Path, tamper: dict, expected: str) -> None:
    add = []
    if "add" in tamper:
        kind = tamper.pop("add")
        name = {"reg": "digits-local-1.2.0/extra.sh", "dotdot": "digits-local-1.2.0/../../evil.sh",
                "absolute": "/tmp/evil.sh", "symlink": "digits-local-1.2.0/passwd",
                "device": "digits-local-1.2.0/null", "duplicate": "digits-local-1.2.0/example.py"}[kind]
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        add.append(info)
    bad = _rewrite(bundle, tmp_path / "bad.tar.gz", add=add, **tamper)
    problems = verify_bundle(bad)
    assert any(expected in p for p in problems), problems
    with pytest.raises(ConfigError) as info:
        check_bundle(bad)
    assert info.value.exit_code == 2 and expected in str(info.value)
    assert not (tmp_path / "evil.sh").exists() and not Path("/tmp/evil.sh").exists()


def test_verify_bundle_reports_non_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert verify_bundle(junk)[0].startswith("not a readable .tar.gz")
    assert verify_bundle(tmp_path / "missing.tar.gz") == [f"{tmp_path / 'missing.tar.gz'}: no such file"]


@pytest.mark.onnx
def test_bundle_example_runs_real_model_with_bundled_runner(tmp_path: Path, tiny_onnx: Path) -> None:
    run = make_run(tmp_path / "run", figures={"onnx-int8": (0.978, 0.061, 1)}, onnx_model=tiny_onnx)
    path = build_bundle(run, "local", tmp_path / "dist", version="0.0.1")
    out = tmp_path / "unpacked"
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(out, filter="data")
    proc = subprocess.run([sys.executable, "example.py"], cwd=out / "digits-local-0.0.1", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("input 0: top-") and " class " in proc.stdout and "onnxruntime" in proc.stdout


def test_cli_release_and_verify_exit_codes(passing_run: Path, run_dir: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    ok = run_cli("release", str(passing_run), "--device", "local", "--dist", str(dist), "--version", "2.0")
    assert ok.returncode == 0, ok.stderr
    bundle = dist / "digits-local-2.0.tar.gz"
    assert str(bundle) in ok.stdout and "pick onnx-fp32" in ok.stdout
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 0 and "OK (" in verified.stdout
    gate = run_cli("release", str(run_dir), "--dist", str(dist))
    assert gate.returncode == 3 and "tflite-int8" in gate.stderr and "Traceback" not in gate.stderr
    bad = _rewrite(bundle, tmp_path / "bad.tar.gz", change="example.py")
    tampered = run_cli("verify", str(bad))
    assert tampered.returncode == 2 and "digits-local-2.0/example.py: size" in tampered.stderr
    assert "Traceback" not in tampered.stderr


def test_build_bundle_picks_device_subfolder_of_fleet_run(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    for device in ("local", "rpi5"):
        make_run(root / device, device=device, figures=PASSING)
        (root / device / "recipe.yaml").replace(root / "recipe.yaml")
    with pytest.raises(ConfigError, match="fleet run with devices local, rpi5"):
        build_bundle(root, None, tmp_path / "dist")
    path = build_bundle(root, "rpi5", tmp_path / "dist", version="1")
    manifest = check_bundle(path)
    assert path.name == "digits-rpi5-1.tar.gz" and manifest["device"] == "rpi5"
    assert manifest["input_shape"] == [1, 1, 8, 8]  # read from the fleet's recipe.yaml one level up


def test_build_bundle_is_identical_from_a_copy_at_another_path(passing_run: Path, tmp_path: Path) -> None:
    import os
    import shutil

    copy = Path(shutil.copytree(passing_run, tmp_path / "elsewhere" / "copied-run", copy_function=shutil.copyfile))
    for f in copy.rglob("*"):
        os.utime(f, (1, 1))  # file times and the folder's location must not leak into the bundle
    a = build_bundle(passing_run, "local", tmp_path / "a", version="9")
    b = build_bundle(copy, "local", tmp_path / "b", version="9")
    assert _sha(a) == _sha(b)


@pytest.mark.onnx
def test_real_run_folder_releases_verifies_reports_and_is_recorded(tmp_path: Path, digits_run_recipe: Path) -> None:
    """The orchestrator's own run folder (not the fabricated one) goes through every command of this issue."""
    out, dist = tmp_path / "run", tmp_path / "dist"
    run = run_cli("run", str(digits_run_recipe), "--device", "local", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    rel = run_cli("release", str(out), "--device", "local", "--dist", str(dist))
    assert rel.returncode == 0, rel.stderr
    bundle = next(dist.glob("digits-local-*.tar.gz"))
    first = _sha(bundle)
    assert run_cli("release", str(out), "--dist", str(dist)).returncode == 0 and _sha(bundle) == first
    assert run_cli("verify", str(bundle)).returncode == 0
    manifest = check_bundle(bundle)
    assert manifest["pick"]["overall"] == "onnx-fp32" and manifest["input_shape"] == [1, 1, 32, 32]
    unpacked = tmp_path / "unpacked"
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    example = subprocess.run([sys.executable, "example.py"], cwd=next(unpacked.iterdir()), capture_output=True,
                             text=True, timeout=120)
    assert example.returncode == 0, example.stderr
    assert example.stdout.startswith("input 0: top-5 class "), example.stdout   # a classifier: top-k classes
    rep = run_cli("report", str(out), "--out", str(tmp_path / "report.html"))
    assert rep.returncode == 0 and (tmp_path / "report.html").read_text().count("<img ") == 3
    hist = run_cli("history", "--add", str(out), "--device", "local", "--json")
    assert hist.returncode == 0, hist.stderr
    assert json.loads(hist.stdout)[0]["best"] == "onnx-fp32"


def test_verify_bundle_catches_model_swapped_with_recomputed_checksums(bundle: Path, tmp_path: Path) -> None:
    """Someone swaps the model and recomputes the file list and SHA256SUMS, but not the measured artifact's hash."""
    top = "digits-local-1.2.0"
    files = _members(bundle)
    model = f"{top}/models/onnx/digits.fp32.onnx"
    files[model] = b"a different model\n"
    manifest = json.loads(files[f"{top}/manifest.json"])
    for f in manifest["files"]:
        if f["path"] == "models/onnx/digits.fp32.onnx":
            f["sha256"], f["bytes"] = hashlib.sha256(files[model]).hexdigest(), len(files[model])
    files[f"{top}/manifest.json"] = json.dumps(manifest).encode()
    sums = {n.removeprefix(top + "/"): hashlib.sha256(d).hexdigest() for n, d in files.items()
            if not n.endswith("SHA256SUMS")}
    files[f"{top}/SHA256SUMS"] = "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())).encode()
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(forged, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert verify_bundle(forged) == [f"{top}/models/onnx/digits.fp32.onnx: differs from the artifact the run "
                                     f"measured (sha256 {manifest['artifacts'][0]['sha256'][:16]}...)",
                                     f"{top}/manifest.sig.json: the signature does not match manifest.json (the "
                                     "manifest was changed after signing)"]


def _example_module(tmp_path: Path, metric: str | None, batch_axes: list[int] | None = None) -> Any:
    """The bundle's example.py for a task, loaded as a module next to the runner (as it lies in a bundle)."""
    import importlib.util
    import shutil

    from pipeline.release.modelcard import example_py
    from targets.runner import RUNNER_PATH

    shutil.copy(RUNNER_PATH, tmp_path / "bench.py")
    path = tmp_path / f"example_{metric}.py"
    path.write_text(example_py("models/onnx/m.onnx", "onnx", "onnxruntime", metric, batch_axes))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_example_prints_boxes_for_a_detector_and_shapes_otherwise(tmp_path: Path) -> None:
    import numpy as np

    det = _example_module(tmp_path, "map50")
    assert det.TASK == "detection"
    packed = np.zeros((80, 14), np.float32)          # (anchors, 4 box values + 10 class logits), one image
    packed[:, 4:] = -6.0
    packed[17, :4], packed[17, 7] = [1.0, 2.0, 3.0, 4.0], 4.0
    text = det.detection([packed])
    assert text.startswith("80 candidates, best 5 raw box values") and "1.0 2.0 3.0 4.0 0.982 3" in text
    boxes, scores = np.tile([[0, 0, 10, 10]], (3, 1)).astype(np.float32), np.array([[0.1, 0.2], [0.9, 0.0], [0.3, 0]])
    landmarks = np.zeros((3, 10), np.float32)
    text = det.detection([boxes, scores, landmarks])
    assert text.startswith("3 candidates, best 3 boxes") and "0.0 0.0 10.0 10.0 0.900 0" in text.split(";")[0]
    other = _example_module(tmp_path, "cosine", batch_axes=[1])
    assert other.TASK == "other"
    time_major = np.arange(2 * 1 * 3, dtype=np.float32).reshape(2, 1, 3)    # (T, B, C): batch on axis 1
    assert other.other(other.one_sample([time_major])) == "output 0: shape [2, 3], first values [0.0, 1.0, 2.0, 3.0]"
