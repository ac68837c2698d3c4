"""User code next to a recipe: loading its modules under names of their own, and watching every call into it.

A factory, a data module or a metric is the user's code: it may hang (a dataset download), fork, or shadow a library
name. This module loads ``module:callable`` specs from the recipe's folder (``spec_from_file_location``, the folder
last on ``sys.meta_path`` for sibling imports), reports a slow call on the console and stops one that runs past
``EDGEPIPE_LOAD_TIMEOUT``, and stops a forked child that returns into edgepipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from targets.errors import ConfigError
from targets.schema import env_seconds


class _RecipeFolders(importlib.abc.MetaPathFinder):
    """Sibling imports inside user modules (``from data import splits``) resolve to the recipe's folder, but only
    after every installed library: this finder sits at the end of ``sys.meta_path``, so a user's ``utils.py`` can
    never shadow a library, and the recipe folder is never put on ``sys.path``."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or "." in name:
            return None
        for folder in reversed(self.folders):
            f = folder / f"{name}.py"
            if f.is_file():
                return importlib.util.spec_from_file_location(name, f)
        return None


_FOLDERS = _RecipeFolders()


def _register_folder(base: Path) -> None:
    if _FOLDERS not in sys.meta_path:
        sys.meta_path.append(_FOLDERS)
    if base in _FOLDERS.folders:
        _FOLDERS.folders.remove(base)
    _FOLDERS.folders.append(base)
    # a sibling of an earlier recipe's folder with the same name (two recipes with data.py) must not be reused
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and "." not in name and (base / f"{name}.py").is_file() and Path(f).resolve().parent != base \
                and Path(f).resolve().parent in _FOLDERS.folders:
            del sys.modules[name]


def load_user_module(module_name: str, base_dir: Path) -> ModuleType:
    """``models`` -> ``<recipe folder>/models.py`` loaded with ``spec_from_file_location`` under a name of its own
    (``edgepipe_user_<hash>.models``), so two recipes' ``models.py`` never meet in ``sys.modules``; a module that is
    not next to the recipe is imported normally (an installed package)."""
    base = base_dir.resolve()
    _register_folder(base)
    rel = Path(*module_name.split("."))
    file = base / rel.with_suffix(".py")
    if not file.is_file() and (base / rel / "__init__.py").is_file():
        file = base / rel / "__init__.py"
    if not file.is_file():
        return importlib.import_module(module_name)
    key = f"edgepipe_user_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
    loaded = sys.modules.get(key)
    if loaded is not None and getattr(loaded, "__edgepipe_mtime__", None) == file.stat().st_mtime_ns:
        return loaded
    spec = importlib.util.spec_from_file_location(key, file)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {file}", name=module_name)
    module = importlib.util.module_from_spec(spec)
    module.__edgepipe_mtime__ = file.stat().st_mtime_ns  # type: ignore[attr-defined]
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(key, None)
        raise
    return module


DEFAULT_LOAD_TIMEOUT = 900.0   # generous: an example's factory may train its teacher once (pipeline/trained.py)
PROGRESS_AFTER = 10.0          # silence before the first "still waiting" line (at most half the timeout), then every
PROGRESS_EVERY = 60.0          # ... this many seconds
_WATCHING: list[str] = []      # the user code being watched now (nested calls are covered by the outer watch)


class _LoadTimeout(BaseException):
    """Raised by the alarm inside user code; a BaseException so a factory's ``except Exception`` cannot eat it."""


def load_timeout() -> float:
    """Seconds user code (a factory, a module's top level) may take: ``EDGEPIPE_LOAD_TIMEOUT``; 0 = no limit."""
    return env_seconds("EDGEPIPE_LOAD_TIMEOUT", DEFAULT_LOAD_TIMEOUT, 7 * 86400, zero_means="no limit")


def _console_fd() -> int:
    """The terminal's fd while pipeline/ui/console.py routes fd 2 to the run's log (its ``edgepipe.console``
    handler's stream), else 2; read without taking logging's locks, which a forked child may find held."""
    for handler in logging.getLogger("edgepipe.console").handlers:
        with contextlib.suppress(Exception):
            return int(handler.stream.fileno())   # type: ignore[attr-defined]
    return 2


def _console_line(line: str) -> None:
    """On the terminal even while fd 2 goes to run.log: pipeline/ui/console.py's ``edgepipe.console`` logger has a
    handler on the console then (this layer may not import the ui); else stderr."""
    console = logging.getLogger("edgepipe.console")
    if console.handlers:
        console.warning(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _stray_child(pid: int, what: str) -> None:
    """A fork inside user code whose child *returns* into edgepipe would run the whole pipeline a second time
    into the same run folder; that child is stopped here (``os._exit``: no atexit handlers, no buffers flushed
    twice). Children that run their own work and exit (multiprocessing) never get here."""
    if os.getpid() != pid:
        with contextlib.suppress(Exception):
            os.write(_console_fd(), f"edgepipe: error: {what} forked, and the child process {os.getpid()} "
                     "returned into edgepipe; it was stopped so that the pipeline runs once (fork only to run work "
                     "that exits, e.g. multiprocessing)\n".encode())
        os._exit(2)


@contextlib.contextmanager
def watching(what: str) -> Iterator[None]:
    """Run user code under a watch: a progress line on stderr when it is slow, a ConfigError (exit 2) naming it
    after ``EDGEPIPE_LOAD_TIMEOUT`` seconds (a factory that never returns must not hang ``check`` silently), and
    a forked child that returns into edgepipe stopped. The alarm needs the main thread and a free ITIMER_REAL; where
    either is missing (a worker thread, a test runner's own alarm) only the fork guard applies."""
    pid = os.getpid()
    usable = not _WATCHING and threading.current_thread() is threading.main_thread() \
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    timeout = load_timeout() if usable else 0.0
    if not usable:
        try:
            yield
        finally:
            _stray_child(pid, what)
        return
    started = time.monotonic()

    def on_alarm(_signum: int, _frame: Any) -> None:
        elapsed = time.monotonic() - started
        if timeout and elapsed >= timeout - 0.01:
            raise _LoadTimeout
        limit = f"; it is stopped after {timeout:g} s (EDGEPIPE_LOAD_TIMEOUT)" if timeout else ""
        with contextlib.suppress(Exception):
            _console_line(f"edgepipe: still waiting for {what} ({elapsed:.0f} s){limit}")
        signal.setitimer(signal.ITIMER_REAL, min(PROGRESS_EVERY, timeout - elapsed) if timeout else PROGRESS_EVERY)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    _WATCHING.append(what)
    try:
        signal.setitimer(signal.ITIMER_REAL, min(PROGRESS_AFTER, timeout / 2) if timeout else PROGRESS_AFTER)
        yield
    except _LoadTimeout:
        raise ConfigError(f"{what} did not return within {timeout:g} s and was stopped",
                          hint="make it return (a download or a lock it waits on?), or allow it longer with "
                               "EDGEPIPE_LOAD_TIMEOUT=SECONDS (0: no limit)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _WATCHING.pop()
        _stray_child(pid, what)


def import_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Resolve ``module:callable``: a module next to the recipe first (loaded under its own name), else installed."""
    module_name, _, attr = spec.partition(":")
    with watching(f"importing {spec!r}"):
        module = load_user_module(module_name, base_dir)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


