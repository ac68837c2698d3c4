"""``verify`` checks the tar index before reading a byte and the Ed25519 signature (issue 15, items 4 and 5)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pipeline.release.bundle import build_bundle
from pipeline.release.verify import verify_bundle
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run

PASSING = {"onnx-fp32": (0.981, 0.061, 4), "onnx-int8": (0.978, 0.110, 1)}   # fp32 ships: the fastest
TOP = "digits-local-1.0"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_bundle(make_run(tmp_path / "run", figures=PASSING), "local", tmp_path / "dist", version="1.0")


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write(dst: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(dst, "w:gz") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def _info(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def test_verify_refuses_a_zero_bomb_from_the_index_without_reading_it(bundle, tmp_path, monkeypatch):
    entries = _members(bundle)
    big = 64 << 20
    bomb = [(m, d) for m, d in entries]
    model = next(i for i, (m, _) in enumerate(bomb) if m.name.endswith("digits.fp32.onnx"))
    bomb[model] = (bomb[model][0], bytes(big))
    bad = _write(tmp_path / "bomb.tar.gz", bomb)
    assert bad.stat().st_size < 1 << 20
    hashed = []
    monkeypatch.setattr("pipeline.release.verify._hash", lambda tar, m: hashed.append(m.name) or "")
    problems = verify_bundle(bad)
    assert any(f"size {big} differs" in p for p in problems), problems
    assert hashed == []  # refused from the index: no member was read


def test_verify_caps_the_total_size(bundle, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_VERIFY_MAX_BYTES", "1000")
    assert any("over the cap of 1000" in p for p in verify_bundle(bundle))


@pytest.mark.parametrize("spelling", [f"{TOP}/./example.py", f"{TOP}//example.py"])
def test_verify_catches_a_duplicate_spelled_differently(bundle, tmp_path, spelling):
    bad = _write(tmp_path / "dup.tar.gz", [*_members(bundle), (_info(spelling), b"import os\n")])
    problems = verify_bundle(bad)
    assert any("appears more than once" in p for p in problems), problems


def test_verify_refuses_setuid_and_setgid_modes(bundle, tmp_path):
    entries = [(m, d) for m, d in _members(bundle)]
    entries[0][0].mode = 0o4755
    entries[1][0].mode = 0o2755
    problems = verify_bundle(_write(tmp_path / "suid.tar.gz", entries))
    assert sum("setuid/setgid" in p for p in problems) == 2, problems


def _forge(bundle: Path, dst: Path, swap_model: bool = True) -> Path:
    """Swap a model and recompute everything an attacker can: file list, the artifact's sha256, SHA256SUMS."""
    files = {m.name: d for m, d in _members(bundle)}
    model = f"{TOP}/models/onnx/digits.fp32.onnx"
    if swap_model:
        files[model] = b"a different model\n"
    digest = hashlib.sha256(files[model]).hexdigest()
    manifest = json.loads(files[f"{TOP}/manifest.json"])
    for f in manifest["files"]:
        if f["path"] == "models/onnx/digits.fp32.onnx":
            f["sha256"], f["bytes"] = digest, len(files[model])
    for a in manifest["artifacts"]:
        if a["path"] == "models/onnx/digits.fp32.onnx":
            a["sha256"] = digest
            a["file_sha256"][a["path"]] = digest
    files[f"{TOP}/manifest.json"] = json.dumps(manifest).encode()
    sums = {n.removeprefix(TOP + "/"): hashlib.sha256(d).hexdigest() for n, d in files.items()
            if not n.endswith(("SHA256SUMS", "manifest.sig.json"))}
    files[f"{TOP}/SHA256SUMS"] = "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())).encode()
    return _write(dst, [(_info(n), d) for n, d in sorted(files.items())])


def test_verify_fails_a_bundle_whose_model_and_checksums_were_all_recomputed(bundle, tmp_path):
    forged = _forge(bundle, tmp_path / "forged.tar.gz")
    assert verify_bundle(forged) == [f"{TOP}/manifest.sig.json: the signature does not match manifest.json (the "
                                     "manifest was changed after signing)"]


def test_verify_with_pubkey_refuses_a_bundle_resigned_with_another_key(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run", figures=PASSING)
    mine = tmp_path / "mine.key"
    assert run_cli("keygen", "--out", str(mine)).returncode == 0
    assert (mine.stat().st_mode & 0o777) == 0o600
    assert run_cli("keygen", "--out", str(tmp_path / "theirs.key")).returncode == 0
    theirs = build_bundle(run_dir, "local", tmp_path / "evil", version="1.0", key=tmp_path / "theirs.key")
    ok = build_bundle(run_dir, "local", tmp_path / "dist", version="1.0", key=mine)
    good = run_cli("verify", str(ok), "--pubkey", f"{mine}.pub")
    assert good.returncode == 0 and "signed by trusted key SHA256:" in good.stdout, good.stderr
    bad = run_cli("verify", str(theirs), "--pubkey", f"{mine}.pub")
    assert bad.returncode == 2 and "not the trusted key given" in bad.stderr
    unpinned = run_cli("verify", str(theirs))
    assert unpinned.returncode == 0 and "NOT checked against a trusted key" in unpinned.stdout


def test_signed_bundles_stay_reproducible(tmp_path):
    run_dir = make_run(tmp_path / "run", figures=PASSING)
    a = build_bundle(run_dir, "local", tmp_path / "a", version="1.0")
    b = build_bundle(run_dir, "local", tmp_path / "b", version="1.0")
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()).count(b"manifest.sig.json") >= 1
