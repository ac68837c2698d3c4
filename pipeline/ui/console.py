"""Keep the console to edgepipe's own lines: third-party chatter goes to run.log.

Runtimes print from C++ straight to file descriptor 2 (oneDNN, TensorFlow/absl, OpenVINO), and Python libraries
log or warn (torchao's "Failed to load ... .so"). None of it is ours to show, all of it may matter when debugging.
During a run, fd 2 and Python's stderr point at run.log, Python logging and warnings land there too, and edgepipe's
progress lines (and its own warnings) go to the original stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "ABSL_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def third_party_to_log(log_path: Path) -> Iterator[TextIO]:
    """Yield a stream to the real console; everything else written to stderr meanwhile is appended to log_path."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    console = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
    old_stderr = sys.stderr
    handler = logging.StreamHandler(console_log := open(log_path, "a", encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    os.dup2(log_fd, 2)
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield console
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stderr.close()
        sys.stderr = old_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(log_fd)
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        console_log.close()
        with contextlib.suppress(Exception):
            console.flush()
            console.close()
