"""Device profiles (DESIGN §4): one YAML file per board, validated strictly, overridable per lab.

Overrides come, strongest first, from the command line (``--host`` ...), then the environment
(``EDGEPIPE_<NAME>_HOST``, ``_USER``, ``_PORT``, ``_KEY``, ``_KNOWN_HOSTS`` with the profile name upper-cased and
``-`` turned into ``_``), then the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from targets import BACKENDS
from targets.errors import ConfigError
from targets.schema import StrictModel, read_yaml, validation_problems


def _bundled_profiles() -> Path:
    """The checkout's device_profiles/, else the copy a wheel ships as ``targets/device_profiles``."""
    here = Path(__file__).resolve().parent
    source = here.parent / "device_profiles"
    return source if (source / "local.yaml").is_file() else here / "device_profiles"


PROFILE_DIR = _bundled_profiles()
OVERRIDABLE = ("host", "user", "port", "key", "known_hosts")


class Connection(StrictModel):
    transport: Literal["local", "ssh"] = "local"
    host: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    command_timeout: float = Field(default=600.0, gt=0, le=7 * 86400, allow_inf_nan=False)
    job_timeout: float = Field(default=1800.0, gt=0, le=7 * 86400, allow_inf_nan=False)


class RuntimeSettings(StrictModel):
    threads: int = Field(default=1, ge=1, le=256)
    onnx_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


# Floors no profile can go below (TFLite's benchmark_model and MLPerf both insist on tens of runs and a duration):
# a figure from fewer iterations or no timed duration is noise, not a latency.
MIN_ITERATIONS_FLOOR = 20
MIN_SECONDS_FLOOR = 0.05


class BenchRules(StrictModel):
    warmup: int = Field(default=20, ge=0)
    min_iterations: int = Field(default=100, ge=MIN_ITERATIONS_FLOOR)
    min_seconds: float = Field(default=10.0, ge=MIN_SECONDS_FLOOR, allow_inf_nan=False)
    max_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    repeat: int = Field(default=1, ge=1, le=10)             # measure each artifact this many times in one job
    repeat_tolerance: float = Field(default=0.05, ge=0)     # max relative spread of the medians before "invalid"

    @model_validator(mode="after")
    def _max_not_below_min(self) -> BenchRules:
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"bench.max_seconds ({self.max_seconds:g}) is below bench.min_seconds "
                             f"({self.min_seconds:g}): every run would stop before its minimum")
        return self


class Telemetry(StrictModel):
    thermal: str | None = None
    throttled: str | None = None
    power_mode: str | None = None
    clocks: str | None = None
    max_temp_c: float | None = Field(default=None, gt=0, lt=150)  # hotter before or after the run: invalid


class DeviceProfile(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    arch: str = "x86_64"
    connection: Connection = Field(default_factory=Connection)
    python: str = "python3"
    workdir: str = "/tmp/edgepipe"
    backends: list[str] = Field(min_length=1)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    bench: BenchRules = Field(default_factory=BenchRules)
    telemetry: Telemetry = Field(default_factory=Telemetry)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        bad = [b for b in value if b not in BACKENDS]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path on the device, e.g. /tmp/edgepipe (no ~, no relative path)")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("holds a control character (a newline?); give a plain path such as /tmp/edgepipe")
        if value.rstrip("/") == "" or ".." in value.split("/"):
            raise ValueError("must be a folder of its own below / without '..', e.g. /tmp/edgepipe (job folders "
                             "are created and removed in it)")
        return value.rstrip("/")  # one spelling of every path under it (the lease matches runners by path)

    @property
    def is_local(self) -> bool:
        return self.connection.transport == "local"


def profile_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEPIPE_PROFILE_PATH", "").split(os.pathsep) if p]
    return [*extra, Path.cwd() / "device_profiles", PROFILE_DIR]


def list_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in reversed(profile_dirs()):  # earlier folders win
        if folder.is_dir():
            for f in sorted(folder.glob("*.yaml")):
                found[f.stem] = f
    return dict(sorted(found.items()))


def resolve_profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        return p
    known = list_profiles()
    if name_or_path not in known:
        raise ConfigError(f"unknown device {name_or_path!r}",
                          hint=f"choose from {', '.join(known) or '(none found)'} or give a profile file path")
    return known[name_or_path]


def env_overrides(name: str) -> dict[str, Any]:
    stem = "EDGEPIPE_" + name.upper().replace("-", "_").replace(".", "_") + "_"
    return {k: os.environ[stem + k.upper()] for k in OVERRIDABLE if os.environ.get(stem + k.upper())}


def load_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> DeviceProfile:
    path = resolve_profile_path(name_or_path)
    data = read_yaml(path, "device profile")
    conn = dict(data.get("connection") or {}) if isinstance(data.get("connection"), dict) else data.get("connection")
    if isinstance(conn, dict):
        name = str(data.get("name", path.stem))
        merged = {**env_overrides(name), **{k: v for k, v in (overrides or {}).items() if v is not None}}
        if merged:
            conn.update(merged)
            conn.setdefault("transport", "ssh")
        data = {**data, "connection": conn}
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid device profile",
                          problems=validation_problems(exc, str(path), model=DeviceProfile)) from None
    if profile.connection.transport == "ssh" and not profile.connection.host:
        raise ConfigError(f"{path}: connection.host is required for transport: ssh",
                          hint=f"set it in the file, with --host, or EDGEPIPE_{profile.name.upper()}_HOST")
    return profile
