"""summary.json (schema 1, DESIGN §6) as typed records.

Each record is a pydantic model that keeps every key it is given (``extra="allow"``: older and newer summaries keep
what they hold) and checks the types of the keys the readers rely on. ``Summary.of(d).dump()`` is ``d`` again, key for
key (``exclude_unset``), so typing the records changed nothing in the file a user or a script reads
(tests/fixtures/summary_fields.json holds the schema of the commit before they were typed).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from targets.errors import ConfigError


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class Metric(Record):
    name: str
    value: float | None = None
    higher_is_better: bool = True
    unit: str | None = None
    values: dict[str, float] | None = None


class Latency(Record):
    p50: float
    p90: float
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    n: int = Field(ge=0)


class Environment(Record):
    runtime: str | None = None
    threads: int | None = None
    governor: str | None = None
    temp_c: float | None = None


class Baseline(Record):
    accuracy: float | None = None
    metric: Metric | None = None
    params: int | None = None
    macs: int | None = None


class Stage(Record):
    name: str
    accuracy: float | None = None
    metric: Metric | None = None
    params: int | None = None
    macs: int | None = None
    seconds: float | None = None
    cached: bool | None = None


class Generation(Record):
    """A language model's greedy generation on the device (issue 24): time to first token and decode speed, each with
    its own n and percentiles, peak memory, and whether it met its measurement rules."""
    prompt_len: int | None = None
    new_tokens: int | None = None
    ttft_ms: Latency | None = None
    decode_tokens_per_s: Latency | None = None
    peak_rss_mb: float | None = None
    valid: bool = False
    why: str | None = None
    greedy_matches_torch: bool | None = None


class ArtifactRecord(Record):
    name: str | None = None
    backend: str
    precision: str
    file: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    accuracy: float | None = None
    metric: Metric | None = None
    latency_ms: Latency | None = None
    valid: bool = False
    invalid_reasons: list[str] = Field(default_factory=list)
    environment: Environment | None = None
    error: str | None = None
    generation: Generation | None = None


class GateVerdict(Record):
    passed: bool
    failures: list[str] = Field(default_factory=list)


class Gate(Record):
    passed: bool
    failures: list[str] = Field(default_factory=list)


class HeadlineSide(Record):
    name: str
    p50_ms: float | None = None
    bytes: int | None = None
    metric: float | None = None


class Headline(Record):
    """The chosen artifact against the original model on this device (pipeline/results/headline.py)."""
    device: str
    text: str
    original: HeadlineSide | None = None
    chosen: HeadlineSide | None = None
    speedup: float | None = None
    size_ratio: float | None = None
    metric_drop: float | None = None


class Summary(Record):
    schema_: int = Field(alias="schema")
    recipe: str
    device: str
    run_id: str
    headline: Headline | None = None           # first after the names: what a reader wants first
    baseline: Baseline = Field(default_factory=Baseline)
    stages: list[Stage] = Field(default_factory=list)
    artifacts: list[ArtifactRecord]
    original: ArtifactRecord | None = None    # the untouched model as FP32 ONNX, measured like an artifact
    gate: Gate | None = None
    status: str | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)

    @classmethod
    def of(cls, data: Any, where: str = "summary.json") -> Summary:
        """A summary read or about to be written; a wrong type is a ConfigError naming each field, at once."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:8]]
            more = f" (and {len(exc.errors()) - 8} more)" if len(exc.errors()) > 8 else ""
            raise ConfigError(f"{where}: not a schema-1 summary: {'; '.join(problems)}{more}",
                              hint="re-run the pipeline to rewrite it") from None
