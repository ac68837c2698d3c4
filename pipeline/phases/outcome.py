"""What the export phase hands on per backend: a typed outcome (the artifact and its check, or why it failed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from targets.artifact import Artifact
from targets.errors import EdgeError, OutputMismatchError


@dataclass(frozen=True)
class Failure:
    """Why a backend has no usable artifact: the one-line message, the error's kind and its exit code (DESIGN §5)."""

    message: str
    kind: str = "EdgeError"
    exit_code: int = 2

    @classmethod
    def of(cls, exc: EdgeError) -> Failure:
        message = exc.message if isinstance(exc, OutputMismatchError) else str(exc)
        return cls(message, type(exc).__name__, exc.exit_code)


@dataclass
class ExportOutcome:
    backend: str                                   # the family: onnx, openvino, tflite
    precision: str                                 # fp32, fp16, int8
    artifact: Artifact | None = None
    validation: dict[str, Any] | None = None       # targets.validate's report
    failure: Failure | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @property
    def usable(self) -> bool:
        """Exported and checked: the only outcomes a device measures."""
        return self.artifact is not None and self.failure is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "precision": self.precision}
        if self.artifact is not None:
            out["artifact"] = self.artifact.to_dict()
        if self.validation is not None:
            out["validation"] = self.validation
        if self.failure is not None:
            out.update(error=self.failure.message, error_type=self.failure.kind, exit_code=self.failure.exit_code)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportOutcome:
        failure = (Failure(str(data["error"]), str(data.get("error_type", "EdgeError")), int(data.get("exit_code", 2)))
                   if data.get("error") else None)
        art = Artifact.from_dict(data["artifact"]) if isinstance(data.get("artifact"), dict) else None
        return cls(str(data["backend"]), str(data["precision"]), art, data.get("validation"), failure)
