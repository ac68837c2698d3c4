"""One line per step with its time on the console, everything in ``run.log``; a live bar for long steps on a terminal.

The bar (training batches, search candidates) is rich's, drawn only when the console is a terminal and removed
when the step ends, so what stays on screen -- and all a pipe, a CI log or a test sees -- is the same plain lines.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


class Bar:
    """A handle on a live bar; every method is a no-op when the console is not a terminal."""

    def __init__(self, live: Any = None, task: Any = None) -> None:
        self._live, self._task = live, task

    def advance(self, n: float = 1) -> None:
        if self._live is not None:
            self._live.advance(self._task, n)

    def update(self, completed: float, total: float | None = None) -> None:
        if self._live is not None:
            self._live.update(self._task, completed=completed, total=total)


class Progress:
    def __init__(self, log_path: Path | None = None, stream: TextIO | None = None, prefix: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.logger = logging.getLogger(f"edgepipe.run.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._handler: logging.Handler | None = None
        self._live: Any = None      # the rich Progress while a bar is shown; our lines print above it
        self._bars = 0
        self._lock = threading.Lock()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.FileHandler(log_path, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(self._handler)

    def __call__(self, message: str) -> None:
        """Log a detail line (run.log only)."""
        self.logger.info(message)

    def _print(self, text: str) -> None:
        live = self._live
        if live is not None:
            live.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)   # as print() would
        else:
            print(text, file=self.stream, flush=True)

    def say(self, message: str) -> None:
        self.logger.info(message)
        self._print(f"{self.prefix}{message}")

    def warn(self, message: str) -> None:
        self.logger.warning(message)
        self._print(f"{self.prefix}WARNING: {message}")

    @property
    def live_bars(self) -> bool:
        """Whether bars are drawn: only on a terminal (a pipe, a file, a test's StringIO get plain lines)."""
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:   # a closed stream
            return False

    @contextmanager
    def bar(self, name: str, total: float | None) -> Iterator[Bar]:
        """A transient live bar for a long step (several may be open at once: one per board of a fleet)."""
        if not self.live_bars:
            yield Bar()
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class Count(MofNCompleteColumn):
            """``3/16`` for a counted step, nothing for a pulsing one (rich would print ``0/?``)."""

            def render(self, task: Any) -> Text:
                return super().render(task) if task.total is not None else Text("")

        with self._lock:
            if self._live is None:
                # rich must not redirect sys.stdout/stderr: those are the libraries' streams, bound for run.log
                self._live = RichProgress(TextColumn("{task.description}"), BarColumn(), Count(),
                                          TimeElapsedColumn(), TimeRemainingColumn(),
                                          console=Console(file=self.stream), transient=True,
                                          redirect_stdout=False, redirect_stderr=False)
                self._live.start()
            self._bars += 1
            live = self._live
            task = live.add_task(f"{self.prefix}{name}", total=total)
        try:
            yield Bar(live, task)
        finally:
            with self._lock:
                live.remove_task(task)
                self._bars -= 1
                if self._bars == 0:
                    live.stop()
                    self._live = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """One line when the step ends; meanwhile, on a terminal, a pulsing bar with the elapsed time (an export's
        calibration, a benchmark) so a long step never looks hung."""
        start = time.perf_counter()
        self.logger.info("start: %s", name)
        try:
            with self.bar(name, None):
                yield
        except BaseException as exc:
            self.say(f"{name:<34} failed after {time.perf_counter() - start:5.1f}s: {exc}")
            raise
        self.say(f"{name:<34} {time.perf_counter() - start:6.1f}s")

    def close(self) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()


def fmt_s(seconds: float) -> str:
    """``42s``, ``3m07s``: an elapsed or remaining time as a progress line shows it."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
