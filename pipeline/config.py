"""The recipe (DESIGN §3): validated at the edge, every problem reported at once.

``load_recipe`` collects schema errors (pydantic), missing files and unimportable factories in one pass and raises a
single ConfigError listing them all, each as ``file: key.path: what is expected``, so a user fixes a recipe in one go.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.search_space import SearchConfig, space_problems
from pipeline.stages.distill import DistillConfig
from pipeline.stages.prune import PruneConfig
from pipeline.stages.quantize import QuantConfig
from targets import BACKENDS
from targets.errors import ConfigError
from targets.schema import StrictModel, read_yaml, validation_problems


class ModelSpec(StrictModel):
    factory: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    weights: str | None = None
    program: str | None = None
    input_shape: list[int] = Field(min_length=2)

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v):
            raise ValueError("every dimension must be a positive integer, e.g. [1, 1, 32, 32]")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.factory is None) == (self.program is None):
            raise ValueError("give exactly one of model.factory (with optional weights) or model.program (.pt2)")
        if self.weights and not self.factory:
            raise ValueError("model.weights needs model.factory (the architecture to load them into)")
        return self


class DataSpec(StrictModel):
    factory: str = Field(pattern=r"^[\w.]+:[\w.]+$")


class Stages(StrictModel):
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantConfig | None = None


class Gate(StrictModel):
    max_accuracy_drop: float = Field(default=1.0, ge=0, le=100)   # points of top-1 against the original model
    max_latency_ms: float | None = Field(default=None, gt=0)       # p90 on the device
    max_bytes: int | None = Field(default=None, gt=0)              # artifact size


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    data: DataSpec
    stages: Stages = Field(default_factory=Stages)
    backends: list[str] | None = None
    gate: Gate = Field(default_factory=Gate)
    search: SearchConfig | None = None                            # read by `edgepipe search` only
    _path: Path = PrivateAttr(default=Path("recipe.yaml"))

    @model_validator(mode="after")
    def _search_values(self) -> Recipe:
        problems = space_problems(self.search, self.stages) if self.search is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("backends")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = [b for b in v if b not in BACKENDS]
            if bad:
                raise ValueError(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")
            if len(set(v)) != len(v):
                raise ValueError("a backend is listed twice")
        return v

    @property
    def path(self) -> Path:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.base_dir / p


# ------------------------------------------------------------------------------------------------ factories
def import_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Resolve ``module:callable`` with the recipe's folder importable first.

    A module of the same name imported earlier from another folder (two recipes both with ``models.py``) is dropped
    from ``sys.modules`` so each recipe gets its own.
    """
    module_name, _, attr = spec.partition(":")
    base = str(base_dir.resolve())
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and getattr(loaded, "__file__", None) and (base_dir / f"{top}.py").exists() \
            and Path(loaded.__file__).resolve().parent != Path(base):
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    if base in sys.path:
        sys.path.remove(base)
    sys.path.insert(0, base)  # first, so a same-named module of an earlier recipe cannot shadow this one
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _factory_problem(spec: Any, base_dir: Path, where: str, source: str) -> str | None:
    if not isinstance(spec, str) or ":" not in spec:
        return None  # the schema reports malformed specs
    try:
        import_factory(spec, base_dir)
    except ModuleNotFoundError as exc:
        return (f"{source}: {where}: cannot import module {exc.name!r} for {spec!r} "
                f"(put {spec.split(':')[0]}.py next to the recipe or install it)")
    except AttributeError:
        return f"{source}: {where}: module has no attribute {spec.split(':')[1]!r} ({spec!r})"
    except Exception as exc:  # noqa: BLE001 - user code failing on import is a recipe problem, shown in one line
        return f"{source}: {where}: importing {spec!r} failed: {type(exc).__name__}: {exc}"
    return None


def _semantic_problems(raw: dict[str, Any], base_dir: Path, source: str) -> list[str]:
    """Files and factories, checked on the raw mapping so they are reported even when the schema also fails."""
    problems: list[str] = []
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    for key, hint in (("weights", "a state_dict saved with torch.save(model.state_dict(), path)"),
                      ("program", "a torch.export program saved with torch.export.save(ep, path)")):
        value = model.get(key)
        if isinstance(value, str):
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                problems.append(f"{source}: model.{key}: file {value!r} not found (looked in {p.parent}); "
                                f"expected {hint}")
    checks = [(model.get("factory"), "model.factory")]
    data = raw.get("data")
    if isinstance(data, dict):
        checks.append((data.get("factory"), "data.factory"))
    stages = raw.get("stages")
    if isinstance(stages, dict) and isinstance(stages.get("distill"), dict):
        checks.append((stages["distill"].get("student"), "stages.distill.student"))
    for spec, where in checks:
        problem = _factory_problem(spec, base_dir, where, source)
        if problem:
            problems.append(problem)
    return problems


# ------------------------------------------------------------------------------------------------ loading
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["stages.prune.ratio=0.3", "backends=[onnx-int8]"]``: values are parsed as YAML."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key.path=value", hint="e.g. --set stages.prune.ratio=0.3")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    raw = apply_overrides(read_yaml(path, "recipe"), list(overrides or []))
    source = str(path)
    problems: list[str] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems += validation_problems(exc, source)
    problems += _semantic_problems(raw, path.parent, source)
    if problems:
        n = len(problems)
        raise ConfigError(f"{source}: {n} problem{'s' if n > 1 else ''} in the recipe", problems=problems,
                          hint="fix them and run `edgepipe check` again")
    assert recipe is not None
    recipe._path = path.resolve()
    return recipe
