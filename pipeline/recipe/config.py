"""The recipe (DESIGN §3): validated at the edge, every problem reported at once.

``load_recipe`` collects schema errors (pydantic), missing files and unimportable factories in one pass and raises a
single ConfigError listing them all, each as ``file: key.path: what is expected``, so a user fixes a recipe in one go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.recipe.bounds import number_problems
from pipeline.recipe.search_config import SearchConfig, space_problems
from pipeline.recipe.usercode import import_factory
from pipeline.stages.distill import DistillConfig
from pipeline.stages.prune import PruneConfig
from pipeline.stages.quantize import QuantConfig
from pipeline.stages.train import TrainConfig
from targets import BACKENDS
from targets.errors import ConfigError
from targets.schema import StrictModel, closest, read_yaml, safe_load_yaml, validation_problems

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


BUILTIN_METRICS = ("top1", "top5", "map50", "map50_95", "cosine", "mse", "perplexity")


class Generate(StrictModel):
    """Task ``lm``: what the measure phase asks the runner to generate -- a prompt of ``prompt_len`` eval tokens,
    then ``new_tokens`` greedy tokens (time to first token, decode tokens/s; LM_CONTRACT.md)."""

    prompt_len: int = Field(ge=1, le=100_000)
    new_tokens: int = Field(ge=1, le=100_000)


class Task(StrictModel):
    """What the model is for: the metric every figure is reported in, and the loss the stages train with."""

    metric: str = "top1"                         # a built-in name or "module:callable" (README: user metrics)
    postprocess: str | None = Field(default=None, pattern=FACTORY)   # host-side, on raw outputs, before the metric
    loss: str | None = Field(default=None, pattern=FACTORY)          # user loss; default follows the metric
    output_loss: Literal["mse", "cosine"] = "mse"                    # output-matching KD (non-classification)
    output_weights: list[float] | None = None                        # one per output; default all 1
    generate: Generate | None = None                                 # lm only: generation measured on the device

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        import re

        if v not in BUILTIN_METRICS and not re.match(FACTORY, v):
            near = closest(v, BUILTIN_METRICS)
            raise ValueError(f"unknown metric {v!r}; " + (f"did you mean {near!r}? " if near else "")
                             + f"choose from {', '.join(BUILTIN_METRICS)} or give 'module:callable' (a user "
                             "metric next to the recipe)")
        return v

    @property
    def classification(self) -> bool:
        return self.metric in ("top1", "top5")

    @property
    def language_model(self) -> bool:
        """Task ``lm`` (metric ``perplexity``): logit KD over every position, like classification over V."""
        return self.metric == "perplexity"

    @model_validator(mode="after")
    def _generate_needs_lm(self) -> Task:
        if self.generate is not None and not self.language_model:
            raise ValueError("task.generate measures text generation: it needs metric: perplexity (task lm), "
                             f"not {self.metric!r}")
        return self


class Stages(StrictModel):
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantConfig | None = None


class Gate(StrictModel):
    # the metric's units: points (x100) for fraction metrics (top-1/5, mAP), raw units for cosine/mse/perplexity/user
    # metrics; a string "N%" is relative instead: worse by at most N percent of the original's value (targets/units.py).
    # The direction comes from the metric. ``max_accuracy_drop`` is the classification alias.
    max_metric_drop: float | str | None = None
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=100)
    max_latency_ms: float | None = Field(default=None, gt=0)       # p90 on the device
    max_bytes: int | None = Field(default=None, gt=0)              # artifact size

    @field_validator("max_metric_drop")
    @classmethod
    def _drop(cls, v: float | str | None) -> float | str | None:
        from targets import units

        if isinstance(v, str):
            limit = units.parse_limit(v)
            if limit is None:
                raise ValueError(f"{v!r} is neither a number nor a percentage; give e.g. 1.0 (the metric's units) "
                                 "or \"5%\" (relative to the original's value)")
            return units.as_written(limit)
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _alias(self) -> Gate:
        if self.max_metric_drop is not None and self.max_accuracy_drop is not None \
                and self.max_metric_drop != self.max_accuracy_drop:
            raise ValueError("give max_metric_drop or its alias max_accuracy_drop, not both")
        if isinstance(self.max_metric_drop, str):   # a relative limit has no accuracy-points alias
            return self
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
    # Shortens the work, never what runs (README "Scale"): `--scale F` / `scale: F`, see scale_recipe.
    scale: float = Field(default=1.0, gt=0, le=1)
    _path: Path = PrivateAttr(default=Path("recipe.yaml"))
    _as_written: dict[str, Any] | None = PrivateAttr(default=None)
    _scaled: dict[str, list[float | int | None]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _prompt_fits(self) -> Recipe:
        gen = self.task.generate
        specs = self.model.input_specs
        if gen is not None and specs and len(specs[0].shape) >= 2 and gen.prompt_len > specs[0].shape[1]:
            raise ValueError(f"task.generate.prompt_len {gen.prompt_len} is longer than the model's input "
                             f"{specs[0].name!r} ({specs[0].shape[1]} tokens): prompts are cut from eval windows")
        return self

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

    def as_written(self) -> dict[str, Any]:
        """The recipe before ``scale`` was applied (with ``scale`` itself): what a run folder's recipe.yaml holds,
        so loading it again runs the same thing instead of scaling twice."""
        return self._as_written if self._as_written is not None else self.model_dump(mode="json")

    def scale_record(self) -> dict[str, Any]:
        """What summary.json records: the factor and every value it changed (``path: [recipe, run]``), so a scaled
        run is never mistaken for a full one."""
        return {"factor": self.scale, "full": self.scale == 1.0, "changed": dict(self._scaled)}


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
        problems += validation_problems(exc, source, model=Recipe)
    else:
        problems += number_problems(recipe.model_dump(mode="python"), source)
    problems += _semantic_problems(raw, path.parent, source)
    if problems:
        n = len(problems)
        raise ConfigError(f"{source}: {n} problem{'s' if n > 1 else ''} in the recipe", problems=problems,
                          hint="fix them and run `edgepipe check` again")
    assert recipe is not None
    recipe._path = path.resolve()
    from pipeline.recipe.scale import scale_recipe

    return scale_recipe(recipe)
