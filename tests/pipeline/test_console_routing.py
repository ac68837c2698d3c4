"""The fd-level router behind every command that runs third-party code, and the live bar (pipeline/ui)."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pipeline.ui.progress import Progress

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)


def test_routed_output_is_moved_to_the_folder_log_when_written_before_and_after_the_folder_is_known(tmp_path):
    proc = _python("""
        import logging, os, sys, threading
        from pathlib import Path
        from pipeline.ui.console import routed, third_party_to_log

        with routed() as r:
            os.write(2, b"C++ at import time\\n")
            print("a rich bar on stdout")
            with third_party_to_log(Path("out/run.log")) as console:
                t = threading.Thread(target=lambda: os.write(1, b"from a C++ thread\\n"))
                t.start(); t.join()
                logging.getLogger("nncf").warning("a library logs")
                logging.getLogger("edgepipe.console").warning("edgepipe: still waiting for model.factory")
                print("edgepipe's own line", file=console)
        print("after: the terminal again")
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "after: the terminal again\n"
    assert proc.stderr == "edgepipe: still waiting for model.factory\nedgepipe's own line\n"
    log = (tmp_path / "out" / "run.log").read_text()
    for line in ("C++ at import time", "a rich bar on stdout", "from a C++ thread", "a library logs",
                 "still waiting"):
        assert line in log
    assert log.index("C++ at import time") < log.index("from a C++ thread")   # the early lines were moved first


def test_routed_keeps_and_names_the_temporary_log_when_a_command_fails_without_a_folder(tmp_path):
    proc = _python("""
        import os
        from pipeline.ui.console import routed

        with routed(what="edgepipe-bench"):
            os.write(2, b"runtime says why\\n")
            raise RuntimeError("boom")
    """, tmp_path)
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith("edgepipe: the libraries' output of this command is in "), proc.stderr
    kept = Path(first.rsplit(" ", 1)[1])
    assert kept.name.startswith("edgepipe-bench-") and kept.read_text() == "runtime says why\n"
    kept.unlink()


def test_routed_removes_the_temporary_log_when_the_command_succeeds(tmp_path):
    proc = _python("""
        import os
        from pipeline.ui.console import routed

        with routed(what="edgepipe-check") as r:
            os.write(2, b"noise\\n")
            print(r.log_path, file=r.console)
    """, tmp_path)
    assert proc.returncode == 0 and proc.stdout == ""
    temporary = Path(proc.stderr.strip())
    assert temporary.name.startswith("edgepipe-check-") and not temporary.exists()


def test_progress_bar_is_plain_lines_when_the_console_is_not_a_terminal(tmp_path):
    stream = io.StringIO()
    progress = Progress(tmp_path / "run.log", stream)
    with progress.bar("distill", 3) as bar:
        bar.advance()
        progress.say("distill epoch 1/3")
    progress.close()
    assert stream.getvalue() == "distill epoch 1/3\n"


def _on_a_terminal(tmp_path: Path, work) -> str:
    """What ``work(progress)`` writes to a real pseudo-terminal, as text (escape sequences included)."""
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w", buffering=1)
    progress = Progress(tmp_path / "run.log", stream)
    work(progress)
    progress.close()
    stream.close()
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return out.decode("utf-8", "replace")


def test_progress_bar_is_drawn_and_our_lines_stay_when_the_console_is_a_terminal(tmp_path):
    def work(progress: Progress) -> None:
        with progress.bar("distill", 3) as bar:
            for _ in range(3):
                bar.advance()
            progress.say("distill epoch 3/3")
            progress.say("x" * 200)   # longer than the terminal: wrapped by the terminal, not broken by rich

    text = _on_a_terminal(tmp_path, work)
    assert "distill epoch 3/3" in text and "x" * 200 in text
    assert "\x1b[" in text and "━" in text   # rich drew a bar with terminal controls


def test_progress_step_pulses_on_a_terminal_and_leaves_one_line(tmp_path):
    def work(progress: Progress) -> None:
        with progress.step("export onnx-int8"):
            time.sleep(0.3)   # a few refreshes of the pulsing bar

    text = _on_a_terminal(tmp_path, work)
    assert "━" in text   # the pulsing bar was drawn meanwhile
    plain = [line.strip() for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()]
    assert [line for line in plain if re.fullmatch(r"export onnx-int8 +\d+\.\ds", line)], plain
