"""Shared pieces for validating YAML configs at the edge: strict models and one-line problem messages.

Both the recipe (``pipeline.recipe.config``) and the device profile (``targets.profiles``) are validated with these, so
a user sees the same ``file: key.path: what is expected`` lines whichever file they got wrong.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, get_args

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


def validation_problems(exc: ValidationError, source: str, prefix: tuple[Any, ...] = (),
                        model: type[BaseModel] | None = None) -> list[str]:
    """One ``source: key.path: what`` line per pydantic error; with the validated ``model``, an unknown key names
    the closest allowed key at that place ("did you mean")."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if err["type"] == "extra_forbidden":
            close = closest(str(loc[-1]), allowed_keys(model, loc[:-1])) if model is not None and loc else None
            msg = (f"unknown key; did you mean {close!r}?" if close else "unknown key (check the spelling)") \
                + " (see the README for the allowed keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:   # a validator's ValueError reads "Value error, <its message>": the message is the user's line
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if "input" in err and err["type"] not in ("model_type", "dict_type"):
                msg += f" (got {short(err['input'])})"
        problems.append(f"{source}: {key_path(tuple(prefix) + loc)}: {msg}")
    return problems


def closest(word: str, choices: list[str] | set[str] | tuple[str, ...]) -> str | None:
    """The known name a near-miss was probably meant to be (``eval_sample`` -> ``eval_samples``, ``mAP50`` ->
    ``map50``), compared case-insensitively; None when nothing is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    hit = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[hit[0]] if hit else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> set[str]:
    """The keys the model accepts at ``loc`` (list indices, mapping keys and union tags are stepped over)."""
    models = [model] if model is not None else []
    for part in loc:
        step: list[type[BaseModel]] = []
        for m in models:
            field = m.model_fields.get(part) if isinstance(part, str) else None
            step += _models_in(field.annotation) if field is not None else [m]
        models = step
    return {k for m in models for name, f in m.model_fields.items() for k in (name, f.alias) if k}


MAX_ALIASES = 100  # a recipe or profile needs a handful; a "billion laughs" needs thousands
MAX_EXPANDED_NODES = 20_000  # values as they are after every alias is expanded (what validation and messages see)
MAX_YAML_BYTES = 1 << 20


def short(value: Any, limit: int = 80) -> str:
    """A value for an error message, never more than ``limit`` characters (inputs may be huge or hostile)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class _BudgetLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases: each may expand to a whole subtree, so a few hundred bytes can hold billions."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) at line {mark.line + 1}; refused "
                                     "as a possible alias bomb")
        return super().compose_node(parent, index)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values a node stands for once aliases are expanded; shared nodes are counted once per use."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts as one
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[id(node)] = min(total, 1 << 62)
    return memo[id(node)]


def safe_load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with an alias budget and a size cap; errors are one-line ConfigErrors naming ``source``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters, more than a config ever needs ({MAX_YAML_BYTES})")
    loader = _BudgetLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_EXPANDED_NODES:
            raise ConfigError(f"{source}: its aliases expand to {size} values (more than {MAX_EXPANDED_NODES}); "
                              "refused as a possible alias bomb", hint="write the values out, or use fewer aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: not valid YAML: {str(getattr(exc, 'problem', None) or exc)[:200]}") \
            from None
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is a ConfigError naming the file and the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found", hint="check the path")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None
    data = safe_load_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping (key: value), got {type(data).__name__}")
    return data


def env_seconds(name: str, default: float, most: float, zero_means: str | None = None) -> float:
    """A duration from the environment variable ``name`` (``default`` when unset): a finite number of seconds up to
    ``most``; 0 is allowed only where it means something (``zero_means``, e.g. "no limit"). Else one ConfigError."""
    env = os.environ.get(name)
    if not env:
        return default
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    low_ok = value >= 0 if zero_means else value > 0
    if not (low_ok and value <= most):   # also refuses nan and inf
        zero = f", 0 for {zero_means}" if zero_means else ""
        raise ConfigError(f"{name}={env[:40]!r}: give seconds up to {most:g}{zero}", hint=f"the default is {default:g}")
    return value
