"""Keep the console to edgepipe's own lines: third-party chatter goes to the run's log.

Runtimes print from C++ straight to file descriptors 1 and 2 (oneDNN, TensorFlow/absl, the TFLite converter's
"Estimated count of arithmetic ops", OpenVINO), some at import time or from their own threads; NNCF draws rich
progress bars on ``sys.stdout``; Python libraries log or warn (torchao's "Failed to load ... .so"). None of it is
ours to show, all of it may matter when debugging. So the guarantee is at the file-descriptor level: while a
command runs third-party code, fds 1 and 2 point at a log file (every thread, every C++ library, every Python
stream that writes to them sees it), Python logging and warnings land there too, and edgepipe's own lines go to a
duplicate of the original stderr.

A command enters :func:`routed` before it imports the heavy modules (so import-time lines are caught too), with
no log file yet: output is kept in a temporary file until the command knows its folder, when
:func:`third_party_to_log` moves it (what was written so far is copied, the rest is appended). Nothing is lost when
a command never gets a folder (``check``): the temporary log is named on failure, removed on success.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from targets.errors import ConfigError

#: Asked of TensorFlow/absl/glog as well; the fd redirect is what guarantees a clean console, these only shorten logs.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "ABSL_MIN_LOG_LEVEL": "2"}
_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
#: edgepipe's own lines from modules below the ui layer (a slow user factory) go to this logger while routed (it has
#: a handler on the console then), else straight to stderr: see pipeline/recipe/usercode.py:_console_line.
CONSOLE_LOGGER = "edgepipe.console"


class Routing:
    """fds 1 and 2 redirected to ``log_path``; ``console`` writes to the terminal the command started on."""

    def __init__(self, log_path: Path | None, what: str = "edgepipe") -> None:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"{what}-", suffix=".log")
            os.close(fd)
            self.log_path, self.temporary = Path(name), True
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path, self.temporary = log_path, False
        _flush_std()
        self._saved = (os.dup(1), os.dup(2))
        self.console: TextIO = os.fdopen(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8",
                                         errors="replace")
        self._point_fds_at(self.log_path)
        self._handler = logging.StreamHandler(open(self.log_path, "a", encoding="utf-8"))
        self._handler.setFormatter(logging.Formatter(_FORMAT))
        root = logging.getLogger()
        self._old_level = root.level
        root.addHandler(self._handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        self._ours = logging.StreamHandler(self.console)
        self._ours.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger(CONSOLE_LOGGER).addHandler(self._ours)

    @staticmethod
    def _point_fds_at(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)

    def move_to(self, log_path: Path) -> None:
        """From now on log to ``log_path``, which starts with what the temporary log holds (nothing is lost)."""
        if log_path == self.log_path:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _flush_std()
        with open(log_path, "ab") as dst, open(self.log_path, "rb") as src:
            shutil.copyfileobj(src, dst)
        self._point_fds_at(log_path)
        old = self._handler.setStream(open(log_path, "a", encoding="utf-8"))
        if old is not None:
            old.close()
        if self.temporary:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        self.log_path, self.temporary = log_path, False

    def close(self, keep_temporary: bool) -> None:
        _flush_std()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        logging.captureWarnings(False)
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._old_level)
        logging.getLogger(CONSOLE_LOGGER).removeHandler(self._ours)
        self._handler.close()
        with contextlib.suppress(Exception):
            self.console.close()
        if self.temporary and not keep_temporary:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


_active: Routing | None = None
_lock = threading.Lock()


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def say_on_console(line: str) -> None:
    """One of edgepipe's own lines on the terminal: the routed console during a command, else stderr."""
    routing = _active
    print(line, file=routing.console if routing is not None else sys.stderr, flush=True)


@contextlib.contextmanager
def routed(log_path: Path | None = None, what: str = "edgepipe") -> Iterator[Routing]:
    """Route third-party output for the duration of a command (re-entrant: an inner call reuses the outer routing).

    On a failure other than a ConfigError a temporary log is kept and named on the console, so whatever a library
    said is still there."""
    global _active
    with _lock:
        outer = _active
        if outer is None:
            _active = Routing(log_path, what)
        elif log_path is not None:
            outer.move_to(log_path)
        routing = _active
    if outer is not None:
        yield routing
        return
    failed = True
    try:
        yield routing
        failed = False
    except ConfigError:   # a recipe or argument mistake: its one line says it all, the libraries' output does not
        failed = False
        raise
    finally:
        with _lock:
            _active = None
            try:
                keep = failed and routing.temporary and routing.log_path.stat().st_size > 0
            except OSError:   # removed meanwhile (a tmp cleaner): nothing to name, the original error matters
                keep = False
            if keep:
                print(f"edgepipe: the libraries' output of this command is in {routing.log_path}",
                      file=routing.console)
            routing.close(keep_temporary=keep)


@contextlib.contextmanager
def third_party_to_log(log_path: Path) -> Iterator[TextIO]:
    """Yield a stream to the real console; everything else written to fds 1 and 2 meanwhile goes to log_path."""
    with routed(log_path) as routing:
        yield routing.console
