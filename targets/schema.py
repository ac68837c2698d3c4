"""Shared pieces for validating YAML configs at the edge: strict models and one-line problem messages.

Both the recipe (``pipeline.config``) and the device profile (``targets.profiles``) are validated with these, so a
user sees the same ``file: key.path: what is expected`` lines whichever file they got wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from targets.errors import ConfigError


class StrictModel(BaseModel):
    """Unknown keys are errors, not silently ignored: a typo in a config must never change nothing."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


def key_path(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def validation_problems(exc: ValidationError, source: str, prefix: tuple[Any, ...] = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(prefix) + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README for the allowed keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] not in ("model_type", "dict_type"):
                msg += f" (got {err['input']!r})"
        problems.append(f"{source}: {key_path(loc)}: {msg}")
    return problems


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is a ConfigError naming the file and the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found", hint="check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping (key: value), got {type(data).__name__}")
    return data
