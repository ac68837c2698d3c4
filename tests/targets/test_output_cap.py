"""The device's outputs.npz is the device's word: its declared size is checked against the output cap on the host,
from the zip index and the .npy headers, before numpy inflates a byte of it (issue 20, item 10)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from targets.artifact import Artifact
from targets.device import benchmark
from targets.errors import DeviceError
from targets.profiles import load_profile

RECORD = {"protocol": 1, "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "std": 0.0, "min": 1.0,
                                        "max": 1.0, "n": 20}, "valid": True, "invalid_reasons": [],
          "outputs": {"file": "outputs.npz", "n": 1, "count": 1}}


def _bomb(path: Path, mib: int) -> Path:
    """An npz declaring ``mib`` MiB of float32 zeros, deflated to a few hundred KB (written in chunks)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (mib * 2**20 // 4,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("out0.npy", "w", force_zip64=True) as fh:
        fh.write(header.getvalue())
        block = bytes(1 << 20)
        for _ in range(mib):
            fh.write(block)
    return path


def _fake_board(tmp_path: Path, bomb: Path) -> object:
    """A "python" on the device that answers like the runner and returns ``bomb`` as its outputs."""
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --outputs ] && cp " + str(bomb) + " \"$2\"; "
                    "shift; done\necho '" + json.dumps(RECORD) + "'\n")
    fake.chmod(0o755)
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\npython: {fake}\nworkdir: {tmp_path / 'wd'}\nbackends: [onnx-fp32]\n")
    return load_profile(str(prof))


def test_benchmark_refuses_outputs_that_expand_past_the_cap_before_loading_them(tmp_path):
    bomb = _bomb(tmp_path / "bomb.npz", 200)
    assert bomb.stat().st_size < 2 << 20  # small on the wire
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read by the fake runner")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((1, 4), np.float32))
    out = tmp_path / "host" / "outputs.npz"
    with pytest.raises(DeviceError, match=r"200\.0 MiB .*over the 64 MiB output cap; not loaded") as info:
        benchmark(_fake_board(tmp_path, bomb), Artifact.from_files(model, backend="onnx", precision="fp32"),
                  inputs, outputs=out)
    assert info.value.exit_code == 4 and "\n" not in str(info.value)
    assert not out.exists() and not list(out.parent.iterdir())  # nothing kept for the scorer to load


def test_check_outputs_npz_refuses_a_header_declaring_more_than_its_zip_size(tmp_path):
    path = tmp_path / "o.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 30,)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("out0.npy", header.getvalue())  # claims 8 GiB, holds nothing
    from targets.device import check_outputs_npz

    with pytest.raises(DeviceError, match="declares 8192.0 MiB of arrays, over the 64 MiB output cap"):
        check_outputs_npz(path, "board: m.onnx")


def test_check_outputs_npz_passes_outputs_within_the_cap(tmp_path):
    path = tmp_path / "o.npz"
    np.savez_compressed(path, out0=np.zeros((1000, 10), np.float32), out1=np.arange(5))
    from targets.device import check_outputs_npz

    check_outputs_npz(path, "board: m.onnx")
