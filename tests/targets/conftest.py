"""Fixtures shared by the target tests: one real sshd for the whole session (see tests/sshd.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import sshd as sshd_mod


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd_mod.Server]:
    reason = sshd_mod.missing_reason()
    if reason:
        pytest.skip(reason)
    server = sshd_mod.start_server(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
