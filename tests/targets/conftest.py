"""Fixtures shared by the target tests: one real sshd for the whole session (see tests/sshd.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import sshd as sshd_mod


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
