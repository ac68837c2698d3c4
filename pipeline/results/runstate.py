"""Run identity and ownership of a run folder: two runs never share an id, a folder, or a store row.

The run id is the recipe name, the UTC time and a random suffix, so two runs started in the same second differ. A
run claims its folder with ``.edgepipe-run.lock`` (created exclusively, holding host, pid and run id); a second run
aimed at a folder a live run holds is refused, and a claim left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

from targets.errors import ConfigError

CLAIM = ".edgepipe-run.lock"


def new_run_id(recipe_name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{recipe_name}-{stamp}-{secrets.token_hex(3)}"


def _alive(claim: dict[str, object]) -> bool:
    if claim.get("host") != socket.gethostname():
        return True  # another machine's run on a shared folder: assume live, never steal it
    pid = claim.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def claim_run_folder(root: Path, run_id: str) -> Iterator[None]:
    """Hold ``root`` for this run; ConfigError (exit 2) when a live run already holds it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / CLAIM
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id}, allow_nan=False).encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                claim = json.loads(path.read_text())
            except (OSError, ValueError):
                claim = {}
            if isinstance(claim, dict) and claim and _alive(claim):
                raise ConfigError(f"{root}: the run folder is in use by run {claim.get('run_id')} (pid "
                                  f"{claim.get('pid')} on {claim.get('host')})",
                                  hint="wait for it to finish, or give this run another --out") from None
            path.unlink(missing_ok=True)  # left by a run that died: take it over
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        break
    else:
        raise ConfigError(f"{root}: could not claim the run folder ({path} keeps reappearing)",
                          hint="another run is starting there; give this run another --out")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_bytes() == body:
                path.unlink()
