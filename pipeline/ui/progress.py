"""One line per step with its time on the console, everything in ``run.log``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class Progress:
    def __init__(self, log_path: Path | None = None, stream: TextIO | None = None, prefix: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.logger = logging.getLogger(f"edgepipe.run.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._handler: logging.Handler | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.FileHandler(log_path, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(self._handler)

    def __call__(self, message: str) -> None:
        """Log a detail line (run.log only)."""
        self.logger.info(message)

    def say(self, message: str) -> None:
        self.logger.info(message)
        print(f"{self.prefix}{message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        self.logger.warning(message)
        print(f"{self.prefix}WARNING: {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.logger.info("start: %s", name)
        try:
            yield
        except BaseException as exc:
            self.say(f"{name:<34} failed after {time.perf_counter() - start:5.1f}s: {exc}")
            raise
        self.say(f"{name:<34} {time.perf_counter() - start:6.1f}s")

    def close(self) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
