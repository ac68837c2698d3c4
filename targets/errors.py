"""One error hierarchy for the whole tool.

Every error a user can cause or fix carries an exit code (DESIGN §5) and a message that says what to do, so the CLI
can print it on one line and exit without a traceback. Anything that is not an ``EdgeError`` is a bug.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL and C1: what a terminal would act on (ESC sequences retitle windows, clear the
# screen, hide text). Text that came from a profile or a board is printed only after these are made visible.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters shown as ``\\xNN`` instead of acted on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


class EdgeError(Exception):
    """Base of every expected failure; ``exit_code`` follows DESIGN §5."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message, hint = printable(message), (printable(hint) if hint is not None else None)
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(EdgeError):
    """A recipe, profile, argument or model file is wrong; fix the input and run again."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint)


class MissingDependencyError(EdgeError):
    """An optional runtime is not installed; the message names the extra to install."""

    exit_code = 2

    def __init__(self, package: str, extra: str | None = None, *, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        what = f" (needed for {purpose})" if purpose else ""
        fix = f"pip install 'edgepipe[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{package} is not installed{what}", hint=f"install it with: {fix}")


class ExportError(EdgeError):
    """A backend cannot convert the model (an unsupported op, a shape it cannot handle)."""

    exit_code = 2

    def __init__(self, backend: str, message: str, *, op: str | None = None, layer: str | None = None,
                 hint: str | None = None) -> None:
        self.backend = backend
        self.op = op
        self.layer = layer
        where = "".join([f" op {op}" if op else "", f" in layer {layer}" if layer else ""])
        super().__init__(f"{backend}: cannot export{where}: {message}", hint=hint)


class OutputMismatchError(EdgeError):
    """An exported artifact does not reproduce its PyTorch parent; every failed check is listed."""

    exit_code = 3

    def __init__(self, artifact: str, failures: list[str]) -> None:
        self.artifact = artifact
        self.failures = list(failures)
        body = "; ".join(self.failures)
        super().__init__(f"{artifact}: output check failed: {body}",
                         hint="the artifact was kept for inspection; see run.log for the figures")


class DeviceError(EdgeError):
    """The device or the way to it failed: unreachable, timed out, remote error."""

    exit_code = 4


class HostKeyError(DeviceError):
    """The device's SSH host key is unknown or changed; nothing was sent."""


class RemoteCommandError(DeviceError):
    """A command on the device exited non-zero or timed out."""

    def __init__(self, message: str, *, exit_status: int | None = None, stderr: str = "",
                 hint: str | None = None) -> None:
        self.exit_status = exit_status
        self.stderr = stderr
        super().__init__(message, hint=hint)


class TransferError(DeviceError):
    """Copying a file to or from the device failed or arrived corrupted."""


class GateError(EdgeError):
    """A quality gate (accuracy drop, latency budget, size) failed; figures were still recorded."""

    exit_code = 3
