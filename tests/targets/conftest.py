"""Fixtures shared by the target tests: one real sshd for the whole session (see tests/sshd.py), and a session-wide
cache of the tiny model's artifacts, each (backend, precision) exported once for all test files."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator

import pytest

from targets.export_config import ExportConfig
from tests import armboard as armboard_mod
from tests import sshd as sshd_mod
from tests.targets._models import data, example, tiny_cnn


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd_mod.Server]:
    reason = sshd_mod.missing_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("sshd")
    server = sshd_mod.start_server(root)
    # The developer's ~/.ssh/config (a `Host *` with a ProxyJump or User) must not steer the tests.
    (root / "empty_ssh_config").write_text("")
    saved = os.environ.get("EDGEPIPE_SSH_CONFIG")
    os.environ["EDGEPIPE_SSH_CONFIG"] = str(root / "empty_ssh_config")
    try:
        yield server
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("EDGEPIPE_SSH_CONFIG", None)
        else:
            os.environ["EDGEPIPE_SSH_CONFIG"] = saved


_MODULES = {"onnx": "targets.export_onnx", "openvino": "targets.export_openvino", "tflite": "targets.export_tflite"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny.model``, ``tiny.calib``, ``tiny.x``, ``tiny.ref`` and ``tiny.artifact(family, precision)``."""
    model = tiny_cnn()
    calib, x = data(32, seed=1), data(64, seed=2)
    out = tmp_path_factory.mktemp("tiny-artifacts")
    cache: dict[tuple[str, str], object] = {}

    class Tiny:
        pass

    t = Tiny()
    t.model, t.calib, t.x = model, calib, x
    import torch

    with torch.no_grad():
        t.ref = model(torch.from_numpy(x)).numpy()

    def artifact(family: str, precision: str):
        if (family, precision) not in cache:
            export = importlib.import_module(_MODULES[family]).export
            cache[family, precision] = export(model, example(), calib, ExportConfig(name="tiny", precision=precision),
                                              out / family)
        return cache[family, precision]

    t.artifact = artifact
    return t


@pytest.fixture(scope="session")
def armboard(tmp_path_factory: pytest.TempPathFactory, sshd: sshd_mod.Server) -> Iterator[armboard_mod.Board]:
    """The emulated Raspberry Pi 5 (tests/armboard.py): its root is cached across sessions, its sshd is fresh.

    Depends on ``sshd`` for the empty ssh_config the SSH tests share."""
    reason = armboard_mod.missing_reason()
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    with armboard_mod.board(tmp_path_factory.mktemp("rpi5")) as board:
        # the fixture's cost, shown by `pytest -rA`/-s and in the CI log: build (0 when cached) and start
        print(f"\n[armboard] root {board.root}: built in {board.build_seconds:.0f} s, ready in "
              f"{time.monotonic() - start:.0f} s")
        yield board
