"""The on-device runner. ``bench.py`` is copied to the device as a single file; keep it stdlib + numpy + a runtime."""

from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("bench.py")
