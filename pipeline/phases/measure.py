"""Measure: every artifact a device wants, over one transport, by the self-contained runner; the raw outputs it
returns are scored here with the task metric. Also ``edgepipe bench`` for one artifact."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.phases.outcome import ExportOutcome
from pipeline.recipe.task import TaskContext
from pipeline.ui.progress import Progress
from targets.artifact import Artifact
from targets.artifact_trust import artifact_for_bench
from targets.device import benchmark
from targets.errors import ConfigError, DeviceError, EdgeError
from targets.jsonio import write_json
from targets.profiles import DeviceProfile, load_profile
from targets.safe_files import copy_regular
from targets.transport import open_transport


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Task lm: the greedy generation every cache-graph artifact runs on the device (``task.generate``), with the
    prompts (the first eval windows, cut to ``prompt_len``) and PyTorch's greedy tokens for them from the model the
    artifacts were exported from -- the reference each float artifact must match token for token."""

    prompt_len: int
    new_tokens: int
    prompts: np.ndarray
    reference: np.ndarray

    PROMPTS = 4

    @classmethod
    def of(cls, generate: dict[str, int] | None, model: Any, inputs: dict[str, np.ndarray]) -> GenerationPlan | None:
        if not generate:
            return None
        from targets.generate import greedy_torch

        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        prompts = np.ascontiguousarray(ids[:cls.PROMPTS, :generate["prompt_len"]])
        return cls(int(generate["prompt_len"]), int(generate["new_tokens"]), prompts,
                   greedy_torch(model, prompts, int(generate["new_tokens"])))

    def entry(self, bench_rec: dict[str, Any], precision: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The summary's ``generation`` entry of one artifact and the problems that fail it (a float artifact that
        does not decode as its model does)."""
        from targets.generate import generation_entry

        gen = bench_rec.get("generation")
        if not isinstance(gen, dict):
            return None, []
        return generation_entry(gen, self.reference, precision)


VALIDATION_KEYS = ("max_abs_error", "top1_agreement", "computed_in", "cosine", "per_output", "metric_drop", "check")


def artifact_record(name: str, entry: ExportOutcome, device_dir: Path, bench_rec: dict[str, Any] | None,
                    error: str | None = None, scored: dict[str, Any] | None = None) -> dict[str, Any]:
    """One artifact's summary record (DESIGN §6) from its export outcome and, when it ran, the runner's record and
    the host's score of the outputs. ``edgepipe search`` builds its cached measurements with the same function."""
    art = entry.artifact
    rec: dict[str, Any] = {"name": name, "backend": entry.backend, "precision": entry.precision}
    if art is not None:
        rec.update(file=os.path.relpath(art.path, device_dir), sha256=art.sha256, bytes=art.bytes,
                   parent=art.parent, metadata=art.metadata)
        if art.file_sha256:  # every file's sha256 (OpenVINO .bin, ONNX external data): release checks each
            rec["files"] = dict(art.file_sha256)
    validation = entry.validation
    if validation:
        rec["validation"] = {k: validation[k] for k in VALIDATION_KEYS if k in validation}
        if "metric" in validation:
            rec["metric"] = validation["metric"]
        if validation.get("accuracy") is not None:
            rec["accuracy"] = validation.get("accuracy")
    err = (entry.failure.message if entry.failure else None) or error
    if scored:   # what the device computed, scored on the host: the figure of record
        rec.update(scored)
    if bench_rec is not None:
        rec["latency_ms"] = bench_rec["latency_ms"]
        state = bench_rec.get("state", {}).get("after", {})
        rec["environment"] = {"runtime": bench_rec.get("runtime"), "threads": bench_rec.get("threads"),
                              "providers": bench_rec.get("providers"), "governor": state.get("governor"),
                              "temp_c": state.get("temp_c"), "os": bench_rec.get("environment", {}).get("os")}
        rec["valid"] = bool(bench_rec.get("valid")) and err is None
        rec["invalid_reasons"] = list(bench_rec.get("invalid_reasons", []))
        rec["bench"] = bench_rec
    else:
        rec["valid"] = False
        rec["invalid_reasons"] = []
    if err:
        rec["error"] = err
        rec["invalid_reasons"].append(err)
    return rec


def read_outputs(path: Path) -> list[np.ndarray]:
    """The device's raw outputs, read part by part (the runner writes them in bounded parts)."""
    from targets.runner.bench import read_outputs as read_parts

    return read_parts(str(path))


def measure_device(profile: DeviceProfile, outcomes: dict[str, ExportOutcome], root: Path, device_dir: Path,
                   inputs: Path, progress: Progress, ctx: TaskContext | None = None,
                   gen: GenerationPlan | None = None) -> tuple[list[dict[str, Any]], list[EdgeError]]:
    """Benchmark every artifact this device wants, over one transport; returns records and device errors.

    The eval inputs go to the device once (not once per artifact); each job returns its raw outputs, which are
    scored here with the task metric. An artifact that failed its check is not benchmarked: its figures would
    look like those of a working model.
    """
    records: list[dict[str, Any]] = []
    errors: list[EdgeError] = []
    transport = None
    try:
        for name in outcomes:  # exactly what was asked: the recipe's list, else the profile's
            entry = outcomes[name]
            art = entry.artifact
            bench_rec, error, scored = None, None, None
            if art is not None and entry.usable:
                if device_dir != root:
                    art = relocate(art, device_dir / "artifacts")
                    entry = dataclasses.replace(entry, artifact=art)
                try:
                    transport = transport or open_transport(profile)
                    out_file = device_dir / "outputs" / f"{name}.npz"
                    with progress.step(f"bench {name} on {profile.name}"):  # inputs travel in each job's folder
                        generation = {"generate": (gen.prompt_len, gen.new_tokens), "prompts": gen.prompts} \
                            if gen else {}
                        bench_rec = benchmark(profile, art, inputs, transport=transport,
                                              outputs=out_file if ctx is not None else None, **generation)
                    write_json(device_dir / "bench" / f"{name}.json", bench_rec)
                    if ctx is not None and out_file.is_file():
                        try:
                            scored = ctx.record(read_outputs(out_file))
                        except Exception as exc:  # noqa: BLE001 - outputs the metric cannot read: a failed check
                            error = f"the device's outputs cannot be scored: {type(exc).__name__}: {exc}"
                    if gen is not None:
                        gen_entry, problems = gen.entry(bench_rec, entry.precision)
                        scored = dict(scored or {})
                        if gen_entry is not None:
                            scored["generation"] = gen_entry
                        elif bench_rec.get("generation_skipped"):
                            scored["generation_skipped"] = bench_rec["generation_skipped"]
                        if problems and error is None:
                            error = "; ".join(problems)
                except DeviceError as exc:
                    error = str(exc)
                    errors.append(exc)
            records.append(artifact_record(name, entry, device_dir, bench_rec, error, scored))
    finally:
        if transport is not None:
            transport.close()
    return records, errors


def relocate(art: Artifact, folder: Path) -> Artifact:
    """The artifact's files copied into ``folder`` (never hard links: files that travel or are packed have one link),
    each checked against its recorded sha256, with its record rewritten to point there: a fleet member's folder holds
    what that device measured. The one relocation rule."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for f in art.files or [art.path]:
        dst = folder / Path(f).name
        if not dst.exists():
            copy_regular(f, dst, Path(art.path).parent, sha256=art.expected_sha256(f))
        files.append(str(dst))
    new = Artifact.from_dict({**art.to_dict(), "path": str(folder / Path(art.path).name), "files": files})
    new.save()
    return new


def bench_artifact(path: str | Path, device: str, profile_overrides: dict[str, Any] | None = None,
                   inputs: Path | None = None, repeat: int | None = None) -> dict[str, Any]:
    """``edgepipe bench``: one artifact on one device, same runner and rules as a run."""
    profile = load_profile(device, profile_overrides)
    if repeat is not None:
        if not 1 <= repeat <= 10:
            raise ConfigError(f"--repeat {repeat}: give 1 to 10")
        profile.bench.repeat = repeat
    art = artifact_for_bench(path)  # the file given is what is measured; its sidecar is checked, not trusted
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as tmp:
        out_file = Path(tmp) / "outputs.npz"
        rec = benchmark(profile, art, inputs, outputs=out_file if inputs else None)
        if inputs is not None and out_file.is_file():
            with np.load(inputs, allow_pickle=False) as data:
                labels = np.asarray(data["y"]) if "y" in data.files else None
            outs = read_outputs(out_file)
            if labels is not None and outs:   # top-1 of the first output, scored here (the runner knows no metric)
                rec["accuracy"] = round(float((outs[0].reshape(len(outs[0]), -1).argmax(1) == labels).mean()), 6)
                rec["n_eval"] = int(len(labels))
    rec["seconds"] = round(time.perf_counter() - start, 2)
    return rec
