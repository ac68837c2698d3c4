"""The recipe (DESIGN §3): validated at the edge, every problem reported at once.

``load_recipe`` collects schema errors (pydantic), missing files and unimportable factories in one pass and raises a
single ConfigError listing them all, each as ``file: key.path: what is expected``, so a user fixes a recipe in one go.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.recipe.search_config import SearchConfig, space_problems
from pipeline.stages.distill import DistillConfig
from pipeline.stages.prune import PruneConfig
from pipeline.stages.quantize import QuantConfig
from pipeline.stages.train import TrainConfig
from targets import BACKENDS
from targets.errors import ConfigError
from targets.schema import StrictModel, read_yaml, safe_load_yaml, validation_problems

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
FACTORY = r"^[\w.]+:[\w.]+$"


class InputSpec(StrictModel):
    """One model input, in ``forward()`` order: the data, the exporters and the runner all address it by name."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    shape: list[int] = Field(min_length=1)        # batch first; the batch is 1 in exported artifacts
    dtype: Literal["float32", "float16", "int64", "int32", "uint8", "bool"] = "float32"

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v):
            raise ValueError("every dimension must be a positive integer, batch first, e.g. [1, 128]")
        return v

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")


class OutputSpec(StrictModel):
    """One model output, in ``forward()`` order: its name and, where it is not 0, the axis that indexes samples
    (a time-major sequence model returns ``(T, B, C)``: ``batch_axis: 1``). Left out, the axis is inferred by running
    the model at two batch sizes where that is unambiguous, else 0."""

    name: str = Field(min_length=1)
    batch_axis: int | None = Field(default=None, ge=0, le=16)


class ModelSpec(StrictModel):
    factory: str | None = Field(default=None, pattern=FACTORY)
    weights: str | None = None
    program: str | None = None
    input_shape: list[int] | None = Field(default=None, min_length=2)   # shorthand: one float32 input "input"
    inputs: list[InputSpec] | None = Field(default=None, min_length=1)
    # names in forward() order, or {name, batch_axis} entries for outputs whose samples are not on axis 0
    outputs: list[str | OutputSpec] | None = Field(default=None, min_length=1)

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d <= 0 for d in v):
            raise ValueError("every dimension must be a positive integer, e.g. [1, 1, 32, 32]")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.factory is None) == (self.program is None):
            raise ValueError("give exactly one of model.factory (with optional weights) or model.program (.pt2)")
        if self.weights and not self.factory:
            raise ValueError("model.weights needs model.factory (the architecture to load them into)")
        if (self.input_shape is None) == (self.inputs is None):
            raise ValueError("give exactly one of model.inputs ([{name, shape, dtype}, ...]) or model.input_shape "
                             "(the shorthand for one float32 input)")
        if self.inputs is not None and len({i.name for i in self.inputs}) != len(self.inputs):
            raise ValueError("model.inputs: two inputs share a name")
        if self.outputs is not None and len(set(self.output_names or [])) != len(self.outputs):
            raise ValueError("model.outputs: two outputs share a name")
        return self

    @property
    def output_names(self) -> list[str] | None:
        """The outputs' names in forward() order (None when the recipe names none)."""
        if self.outputs is None:
            return None
        return [o if isinstance(o, str) else o.name for o in self.outputs]

    @property
    def declared_batch_axes(self) -> list[int | None] | None:
        """Each output's declared batch axis (None where the recipe leaves it to inference)."""
        if self.outputs is None:
            return None
        return [None if isinstance(o, str) else o.batch_axis for o in self.outputs]

    @property
    def input_specs(self) -> list[InputSpec]:
        """Every input; ``input_shape`` is one float32 input named ``input``."""
        if self.inputs is not None:
            return list(self.inputs)
        return [InputSpec(name="input", shape=list(self.input_shape or []), dtype="float32")]


class DataSpec(StrictModel):
    factory: str = Field(pattern=FACTORY)
    eval_samples: int = Field(default=500, ge=1)   # what the host checks and a board holds and runs


BUILTIN_METRICS = ("top1", "top5", "map50", "map50_95", "cosine", "mse")


class Task(StrictModel):
    """What the model is for: the metric every figure is reported in, and the loss the stages train with."""

    metric: str = "top1"                         # a built-in name or "module:callable" (README: user metrics)
    postprocess: str | None = Field(default=None, pattern=FACTORY)   # host-side, on raw outputs, before the metric
    loss: str | None = Field(default=None, pattern=FACTORY)          # user loss; default follows the metric
    output_loss: Literal["mse", "cosine"] = "mse"                    # output-matching KD (non-classification)
    output_weights: list[float] | None = None                        # one per output; default all 1

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        import re

        if v not in BUILTIN_METRICS and not re.match(FACTORY, v):
            raise ValueError(f"unknown metric {v!r}; choose from {', '.join(BUILTIN_METRICS)} or give "
                             "'module:callable' (a user metric next to the recipe)")
        return v

    @property
    def classification(self) -> bool:
        return self.metric in ("top1", "top5")


class Stages(StrictModel):
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantConfig | None = None


class Gate(StrictModel):
    # the metric's units: points (x100) for fraction metrics (top-1/5, mAP), raw units for cosine/mse/user metrics;
    # the direction comes from the metric. ``max_accuracy_drop`` is the classification alias.
    max_metric_drop: float | None = Field(default=None, ge=0)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=100)
    max_latency_ms: float | None = Field(default=None, gt=0)       # p90 on the device
    max_bytes: int | None = Field(default=None, gt=0)              # artifact size

    @model_validator(mode="after")
    def _alias(self) -> Gate:
        if self.max_metric_drop is not None and self.max_accuracy_drop is not None \
                and self.max_metric_drop != self.max_accuracy_drop:
            raise ValueError("give max_metric_drop or its alias max_accuracy_drop, not both")
        if self.max_metric_drop is None:
            self.__dict__["max_metric_drop"] = 1.0 if self.max_accuracy_drop is None else self.max_accuracy_drop
        self.__dict__["max_accuracy_drop"] = self.max_metric_drop
        return self


MAX_NAME = 100   # the name goes into folder and file names (run id, bundle, cache): 255 bytes is the OS limit


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME)
    model: ModelSpec
    data: DataSpec
    task: Task = Field(default_factory=Task)
    stages: Stages = Field(default_factory=Stages)
    train: TrainConfig = Field(default_factory=TrainConfig)       # where and how the stages train (device, amp...)
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
class _RecipeFolders(importlib.abc.MetaPathFinder):
    """Sibling imports inside user modules (``from data import splits``) resolve to the recipe's folder, but only
    after every installed library: this finder sits at the end of ``sys.meta_path``, so a user's ``utils.py`` can
    never shadow a library, and the recipe folder is never put on ``sys.path``."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or "." in name:
            return None
        for folder in reversed(self.folders):
            f = folder / f"{name}.py"
            if f.is_file():
                return importlib.util.spec_from_file_location(name, f)
        return None


_FOLDERS = _RecipeFolders()


def _register_folder(base: Path) -> None:
    if _FOLDERS not in sys.meta_path:
        sys.meta_path.append(_FOLDERS)
    if base in _FOLDERS.folders:
        _FOLDERS.folders.remove(base)
    _FOLDERS.folders.append(base)
    # a sibling of an earlier recipe's folder with the same name (two recipes with data.py) must not be reused
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and "." not in name and (base / f"{name}.py").is_file() and Path(f).resolve().parent != base \
                and Path(f).resolve().parent in _FOLDERS.folders:
            del sys.modules[name]


def load_user_module(module_name: str, base_dir: Path) -> ModuleType:
    """``models`` -> ``<recipe folder>/models.py`` loaded with ``spec_from_file_location`` under a name of its own
    (``edgepipe_user_<hash>.models``), so two recipes' ``models.py`` never meet in ``sys.modules``; a module that is
    not next to the recipe is imported normally (an installed package)."""
    base = base_dir.resolve()
    _register_folder(base)
    rel = Path(*module_name.split("."))
    file = base / rel.with_suffix(".py")
    if not file.is_file() and (base / rel / "__init__.py").is_file():
        file = base / rel / "__init__.py"
    if not file.is_file():
        return importlib.import_module(module_name)
    key = f"edgepipe_user_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
    loaded = sys.modules.get(key)
    if loaded is not None and getattr(loaded, "__edgepipe_mtime__", None) == file.stat().st_mtime_ns:
        return loaded
    spec = importlib.util.spec_from_file_location(key, file)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {file}", name=module_name)
    module = importlib.util.module_from_spec(spec)
    module.__edgepipe_mtime__ = file.stat().st_mtime_ns  # type: ignore[attr-defined]
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(key, None)
        raise
    return module


DEFAULT_LOAD_TIMEOUT = 900.0   # generous: an example's factory may train its teacher once (pipeline/trained.py)
PROGRESS_AFTER = 10.0          # silence before the first "still waiting" line (at most half the timeout), then every
PROGRESS_EVERY = 60.0          # ... this many seconds
_WATCHING: list[str] = []      # the user code being watched now (nested calls are covered by the outer watch)


class _LoadTimeout(BaseException):
    """Raised by the alarm inside user code; a BaseException so a factory's ``except Exception`` cannot eat it."""


def load_timeout() -> float:
    """Seconds user code (a factory, a module's top level) may take: ``EDGEPIPE_LOAD_TIMEOUT``; 0 = no limit."""
    env = os.environ.get("EDGEPIPE_LOAD_TIMEOUT")
    if not env:
        return DEFAULT_LOAD_TIMEOUT
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 7 * 86400:
        raise ConfigError(f"EDGEPIPE_LOAD_TIMEOUT={env[:40]!r}: give seconds (0 for no limit, at most a week)",
                          hint=f"the default is {DEFAULT_LOAD_TIMEOUT:g}")
    return value


def _stray_child(pid: int, what: str) -> None:
    """A fork inside user code whose child *returns* into edgepipe would run the whole pipeline a second time
    into the same run folder; that child is stopped here (``os._exit``: no atexit handlers, no buffers flushed
    twice). Children that run their own work and exit (multiprocessing) never get here."""
    if os.getpid() != pid:
        with contextlib.suppress(Exception):
            os.write(2, f"edgepipe: error: {what} forked, and the child process {os.getpid()} returned into "
                        "edgepipe; it was stopped so that the pipeline runs once (fork only to run work that "
                        "exits, e.g. multiprocessing)\n".encode())
        os._exit(2)


@contextlib.contextmanager
def watching(what: str) -> Iterator[None]:
    """Run user code under a watch: a progress line on stderr when it is slow, a ConfigError (exit 2) naming it
    after ``EDGEPIPE_LOAD_TIMEOUT`` seconds (a factory that never returns must not hang ``check`` silently), and
    a forked child that returns into edgepipe stopped. The alarm needs the main thread and a free ITIMER_REAL; where
    either is missing (a worker thread, a test runner's own alarm) only the fork guard applies."""
    pid = os.getpid()
    usable = not _WATCHING and threading.current_thread() is threading.main_thread() \
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    timeout = load_timeout() if usable else 0.0
    if not usable:
        try:
            yield
        finally:
            _stray_child(pid, what)
        return
    started = time.monotonic()

    def on_alarm(_signum: int, _frame: Any) -> None:
        elapsed = time.monotonic() - started
        if timeout and elapsed >= timeout - 0.01:
            raise _LoadTimeout
        limit = f"; it is stopped after {timeout:g} s (EDGEPIPE_LOAD_TIMEOUT)" if timeout else ""
        with contextlib.suppress(Exception):
            print(f"edgepipe: still waiting for {what} ({elapsed:.0f} s){limit}", file=sys.stderr, flush=True)
        signal.setitimer(signal.ITIMER_REAL, min(PROGRESS_EVERY, timeout - elapsed) if timeout else PROGRESS_EVERY)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    _WATCHING.append(what)
    try:
        signal.setitimer(signal.ITIMER_REAL, min(PROGRESS_AFTER, timeout / 2) if timeout else PROGRESS_AFTER)
        yield
    except _LoadTimeout:
        raise ConfigError(f"{what} did not return within {timeout:g} s and was stopped",
                          hint="make it return (a download or a lock it waits on?), or allow it longer with "
                               "EDGEPIPE_LOAD_TIMEOUT=SECONDS (0: no limit)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _WATCHING.pop()
        _stray_child(pid, what)


def import_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Resolve ``module:callable``: a module next to the recipe first (loaded under its own name), else installed."""
    module_name, _, attr = spec.partition(":")
    with watching(f"importing {spec!r}"):
        module = load_user_module(module_name, base_dir)
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
    task = raw.get("task")
    if isinstance(task, dict):
        for key in ("metric", "postprocess", "loss"):
            if key != "metric" or task.get("metric") not in BUILTIN_METRICS:
                checks.append((task.get(key), f"task.{key}"))
    for spec, where in checks:
        problem = _factory_problem(spec, base_dir, where, source)
        if problem:
            problems.append(problem)
    return problems


# ------------------------------------------------------------------------------------------------ numbers
MAX_MAGNITUDE = 1e15   # above any sane figure (1 PB in bytes, 30 years in ms); 1e30 is a typo, not a setting
# per-key ceilings for values that size loops or steps (the last key of the path): a typo must not run for a year
BOUNDS: dict[str, float] = {
    "epochs": 100_000, "finetune_epochs": 100_000, "batch_size": 1_000_000, "eval_batch_size": 1_000_000,
    "lr": 10.0, "temperature": 1_000.0, "num_workers": 1_024, "calib_samples": 10_000_000,
    "sensitivity_samples": 10_000_000, "weight_decay": 10.0, "max_groups": 10_000, "guard_iterations": 10_000_000,
    "guard_seconds": 3_600.0,
}


def number_problems(obj: Any, source: str, path: str = "") -> list[str]:
    """Every number in the validated recipe that is NaN/Inf or beyond sane bounds, one line each naming the key:
    ``stages.prune.finetune_epochs: .inf`` passed the schema's ``ge=0`` and ran forever."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in number_problems(v, source, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in number_problems(v, source, f"{path}[{i}]")]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return []
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{source}: {path}: {obj} is not a finite number"]
    limit = BOUNDS.get(key, MAX_MAGNITUDE)
    if abs(obj) > limit:
        return [f"{source}: {path}: {obj:g} is out of range (at most {limit:g})"]
    return []


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
        node[parts[-1]] = safe_load_yaml(value, f"--set {key}=")
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
    else:
        problems += number_problems(recipe.model_dump(mode="python"), source)
    problems += _semantic_problems(raw, path.parent, source)
    if problems:
        n = len(problems)
        raise ConfigError(f"{source}: {n} problem{'s' if n > 1 else ''} in the recipe", problems=problems,
                          hint="fix them and run `edgepipe check` again")
    assert recipe is not None
    recipe._path = path.resolve()
    return recipe
