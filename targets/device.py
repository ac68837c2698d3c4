"""Benchmark jobs on a device: upload the runner, the artifact and the inputs, run, parse one JSON line, clean up.

The job folder is fresh per job under the profile's ``workdir`` (marked as edgepipe's, ``targets.remote.JOB_MARK``)
and removed afterwards, whatever happened (an error, a timeout, Ctrl-C, SIGTERM). A job holds the device lock
(``targets.lock``) from upload to cleanup, so two runs aimed at one board never overlap and disturb each other's
figures; the whole job is bounded by ``connection.job_timeout``. Everything a job reads is inside its own folder,
the eval inputs included: concurrent runs never share (and never delete) each other's files. Every artifact file is
sent only as a regular single-link file of the artifact's folder with the sha256 recorded when it was made
(``targets.safe_files``), and the outputs that come back are checked against the output cap before numpy opens them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from targets.artifact import Artifact
from targets.errors import ConfigError, DeviceError, RemoteCommandError
from targets.lock import device_lock, runner_argv_with_pid, runner_pid_path
from targets.profiles import DeviceProfile
from targets.remote import PURGE_JOBS_SH
from targets.runner import RUNNER_PATH
from targets.transport import Transport, open_transport

STALE_JOB_MIN = 10
LEASE_GRACE_S = 120  # cleanup after the job timeout
MAX_OUTPUT_MB = 64  # the runner's --max-output-mb default: raw outputs a device may return
NPZ_SLACK = 1 << 20  # npz headers and the zip directory on top of the raw outputs
MAX_GENERATED_TOKENS = 100_000  # the greedy tokens travel in the runner's JSON line (a 4 MiB stream cap)


def runner_argv(profile: DeviceProfile, python: str, job: str, artifact_name: str, backend: str,
                inputs_name: str | None, precision: str | None = None, outputs: bool = False,
                generate: tuple[int, int] | None = None) -> list[str]:
    rules, rt, tel = profile.bench, profile.runtime, profile.telemetry
    argv = [python, f"{job}/bench.py", "--artifact", f"{job}/{artifact_name}", "--backend", backend,
            *(["--precision", precision] if precision else []),
            "--threads", str(rt.threads), "--warmup", str(rules.warmup),
            "--min-iterations", str(rules.min_iterations), "--min-seconds", str(rules.min_seconds),
            "--max-seconds", str(rules.max_seconds), "--providers", ",".join(rt.onnx_providers)]
    if inputs_name:
        argv += ["--inputs", inputs_name if inputs_name.startswith("/") else f"{job}/{inputs_name}"]
        if outputs:
            argv += ["--outputs", f"{job}/outputs.npz"]
    if generate:   # the prompts travel in the job's folder as prompts.npz
        argv += ["--generate", f"{generate[0]},{generate[1]}", "--prompts", f"{job}/prompts.npz"]
    for flag, value in (("--thermal", tel.thermal), ("--throttled-cmd", tel.throttled),
                        ("--power-mode-cmd", tel.power_mode), ("--clocks-cmd", tel.clocks)):
        if value:
            argv += [flag, value]
    if tel.max_temp_c is not None:
        argv += ["--max-temp-c", str(tel.max_temp_c)]
    return argv


def parse_runner_output(result_stdout: str, context: str) -> dict[str, Any]:
    for line in reversed(result_stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise RemoteCommandError(f"{context}: the runner printed no JSON result",
                             hint="run `edgepipe doctor` on the device to check python and numpy")


def record_problems(rec: Any, rules: dict[str, Any] | None = None) -> list[str]:
    """What makes a runner record read back from elsewhere (a cache, a file) unfit to stand as a measurement: its
    shape, its statistics (finite, ordered, n iterations), and the runner's own rules re-applied with ``rules``
    (warmup, min_iterations, min_seconds, max_seconds of the profile). Empty when it may be used as measured."""
    from targets.runner.bench import rule_problems

    if not isinstance(rec, dict) or not isinstance(rec.get("latency_ms"), dict):
        return ["no latency_ms"]
    lat = rec["latency_ms"]
    keys = ("p50", "p90", "p99", "mean", "n")
    if not all(isinstance(lat.get(k), (int, float)) and not isinstance(lat.get(k), bool) for k in keys):
        return [f"latency_ms lacks one of {', '.join(keys)}"]
    if not all(math.isfinite(lat[k]) and lat[k] >= 0 for k in keys):
        return ["a latency figure is negative or not finite"]
    problems = []
    if not lat["p50"] <= lat["p90"] <= lat["p99"]:
        problems.append(f"percentiles out of order (p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']})")
    if not isinstance(rec.get("valid"), bool) or not isinstance(rec.get("invalid_reasons", []), list):
        problems.append("valid / invalid_reasons malformed")
    elif rec["valid"] and rec.get("invalid_reasons"):
        problems.append("marked valid with invalid reasons")
    if rules:
        args = argparse.Namespace(**{k: rules[k] for k in ("min_iterations", "min_seconds", "max_seconds")})
        if rec.get("valid") and rule_problems(args, int(lat["n"])):
            problems += rule_problems(args, int(lat["n"]))
    if "generation" in rec:
        problems += [f"generation: {p}" for p in generation_problems(rec["generation"], rules)]
    return problems


def _stats_problems(stats: Any, what: str) -> list[str]:
    keys = ("p50", "p90", "p99", "mean", "n")
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), (int, float)) and
                                              not isinstance(stats.get(k), bool) for k in keys):
        return [f"{what} lacks one of {', '.join(keys)}"]
    if not all(math.isfinite(stats[k]) and stats[k] >= 0 for k in keys):
        return [f"a {what} figure is negative or not finite"]
    if not stats["p50"] <= stats["p90"] <= stats["p99"]:
        return [f"{what} percentiles out of order (p50 {stats['p50']}, p90 {stats['p90']}, p99 {stats['p99']})"]
    return []


def generation_problems(gen: Any, rules: dict[str, Any] | None = None,
                        expect: tuple[int, int, int] | None = None) -> list[str]:
    """What makes a runner's generation record unfit to stand (as ``record_problems`` for latency): its shape, its
    TTFT and tokens/s statistics (finite, ordered; one of each per timed generation), the runner's rules re-applied
    with ``rules`` to its number of timed generations, and with ``expect`` = (prompt_len, new_tokens, prompts) the
    tokens it owes the host (one list of new_tokens ids per prompt). A record that only lacks its tokens (a
    summary's copy) is checked without them."""
    from targets.runner.bench import rule_problems

    if not isinstance(gen, dict):
        return ["not a record"]
    problems = _stats_problems(gen.get("ttft_ms"), "ttft_ms") + _stats_problems(gen.get("decode_tokens_per_s"),
                                                                                "decode_tokens_per_s")
    if problems:
        return problems
    n = int(gen["ttft_ms"]["n"])
    if int(gen["decode_tokens_per_s"]["n"]) != n:
        problems.append(f"{n} TTFT figures but {gen['decode_tokens_per_s']['n']} tokens/s figures")
    rss = gen.get("peak_rss_mb")
    if rss is not None and (isinstance(rss, bool) or not isinstance(rss, (int, float)) or not math.isfinite(rss)
                            or rss <= 0):
        problems.append(f"peak_rss_mb {rss!r} is not a positive figure")
    if not isinstance(gen.get("valid"), bool) or not isinstance(gen.get("why", ""), str):
        problems.append("valid / why malformed")
    elif gen["valid"] and gen.get("why"):
        problems.append("marked valid with a reason not to be")
    if expect is not None:
        prompt_len, new_tokens, count = expect
        if (gen.get("prompt_len"), gen.get("new_tokens")) != (prompt_len, new_tokens):
            problems.append(f"generated {gen.get('prompt_len')},{gen.get('new_tokens')}, asked for "
                            f"{prompt_len},{new_tokens}")
        tokens = gen.get("tokens")
        if not (isinstance(tokens, list) and len(tokens) == count and all(
                isinstance(t, list) and len(t) == new_tokens and all(isinstance(i, int) and not isinstance(i, bool)
                                                                    for i in t) for t in tokens)):
            problems.append(f"tokens are not {count} lists of {new_tokens} ids")
    if rules and gen.get("valid"):
        args = argparse.Namespace(**{k: rules[k] for k in ("min_iterations", "min_seconds", "max_seconds")})
        problems += rule_problems(args, n)
    return problems


def check_outputs_npz(path: Path, context: str, cap_mb: float = MAX_OUTPUT_MB) -> None:
    """Refuse an outputs .npz that would expand past the cap, from its zip index and .npy headers alone.

    The runner caps what it writes on the device, but the file is the device's word: 1.5 MB on the wire can hold
    1.5 GB of zeros, which ``np.load`` would inflate into this host's memory. Nothing is decompressed here."""
    cap = int(cap_mb * 2**20)
    fix = (f"the device's outputs must fit in {cap_mb:g} MiB (the runner's cap): evaluate fewer samples, or check "
           "the device's runner is edgepipe's")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > cap + NPZ_SLACK or len(infos) > 4096:
                raise DeviceError(f"{context}: outputs.npz from the device expands to {total / 2**20:.1f} MiB in "
                                  f"{len(infos)} arrays, over the {cap_mb:g} MiB output cap; not loaded", hint=fix)
            raw = 0
            for info in infos:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"{info.filename}: .npy format {version} (numpy writes 1.0 or 2.0 here)")
                if dtype.hasobject:
                    raise DeviceError(f"{context}: outputs.npz holds an object array ({info.filename}); not loaded",
                                      hint="check the device's runner is edgepipe's")
                raw += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if raw > cap:
                raise DeviceError(f"{context}: outputs.npz from the device declares {raw / 2**20:.1f} MiB of arrays, "
                                  f"over the {cap_mb:g} MiB output cap; not loaded", hint=fix)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DeviceError(f"{context}: outputs.npz from the device is not a readable .npz ({type(exc).__name__}: "
                          f"{str(exc)[:120]})", hint="check the device's storage; run `edgepipe doctor` there"
                          ) from None


def _repeated(recs: list[dict[str, Any]], medians: list[float], tolerance: float, what: str,
              key: str) -> tuple[dict[str, Any], list[str]]:
    """The repeat record of one figure over several runs, and every run's invalid reasons plus the spread's own."""
    spread = (max(medians) - min(medians)) / min(medians) if min(medians) > 0 else 0.0
    reasons: list[str] = []
    for rec in recs:
        reasons += [r for r in rec.get("invalid_reasons") or [] if r not in reasons]
    if spread > tolerance:
        reasons.append(f"repeat check: {what} {', '.join(f'{p:g}' for p in medians)} ms differ by {spread:.1%} "
                       f"(tolerance {tolerance:.0%})")
    return {key: medians, "spread": round(spread, 4), "tolerance": tolerance, "stable": spread <= tolerance}, reasons


def repeat_check(records: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The first measurement, with the medians of all and their spread; apart by more than ``tolerance``, the
    figure is not reproducible on this board and is marked invalid. A generation's time to first token is held to
    the same rule."""
    record = dict(records[0])
    record["repeat"], reasons = _repeated(records, [float(r["latency_ms"]["p50"]) for r in records], tolerance,
                                          "medians", "p50")
    record["invalid_reasons"] = reasons
    record["valid"] = not reasons
    gens = [r["generation"] for r in records if isinstance(r.get("generation"), dict)]
    if len(gens) == len(records) and gens:
        gen = dict(gens[0])
        repeat, why = _repeated(gens, [float(g["ttft_ms"]["p50"]) for g in gens], tolerance, "TTFT medians",
                                "ttft_p50")
        gen.update(repeat=repeat, invalid_reasons=why, valid=not why, why="; ".join(why))
        record["generation"] = gen
    return record


def benchmark(profile: DeviceProfile, artifact: Artifact, inputs: Path | str | None = None,
              transport: Transport | None = None, outputs: Path | None = None, *,
              generate: tuple[int, int] | None = None, prompts: Path | np.ndarray | None = None) -> dict[str, Any]:
    """Run the on-device runner for one artifact and return its JSON record (latency, state). ``inputs`` is a local
    file (uploaded into the job's own folder) or a path on the device the caller keeps there; with ``outputs`` the
    raw outputs on those inputs are fetched to that local .npz for the host to score.

    ``generate=(prompt_len, new_tokens)`` with ``prompts`` (int64 ``prompt_ids`` [n, prompt_len], as an array or a
    local .npz from ``targets.generate.write_prompts``) also times greedy generation on a decoder's cache graph: the
    record gains ``"generation"`` (bench.generation: TTFT and decode tokens/s statistics, peak RSS, validity and the
    greedy tokens, checked here by ``generation_problems``). An artifact without the cache graph (a TFLite lm
    artifact: static shapes) is measured without it and says why in ``"generation_skipped"``."""
    import tempfile

    skipped = None
    if generate is not None:
        gen_meta = artifact.metadata.get("generation") if isinstance(artifact.metadata, dict) else None
        if not isinstance(gen_meta, dict):
            skipped = (f"{artifact.backend}-{artifact.precision} has no key/value-cache graph (static shapes): "
                       "perplexity only, no generation figures")
            generate = None
        else:
            from targets.generate import check_positions

            check_positions(int(generate[0]), int(generate[1]), int(gen_meta.get("max_positions", 1 << 30)))
    with tempfile.TemporaryDirectory(prefix="edgepipe-prompts-") as tmp:
        prompt_file: Path | None = None
        if generate is not None:
            if prompts is None:
                raise ConfigError("generate needs prompts (int64 prompt_ids [n, prompt_len])")
            prompt_file = Path(prompts) if not isinstance(prompts, np.ndarray) else Path(tmp) / "prompts.npz"
            if isinstance(prompts, np.ndarray):
                from targets.generate import write_prompts

                write_prompts(prompt_file, prompts)
            with np.load(prompt_file, allow_pickle=False) as data:
                shape = data["prompt_ids"].shape if "prompt_ids" in data.files else ()
            if len(shape) != 2 or shape[1] != generate[0]:
                raise ConfigError(f"prompts {prompt_file}: prompt_ids {list(shape)}, expected [n, {generate[0]}]")
            if shape[0] * generate[1] > MAX_GENERATED_TOKENS:
                raise ConfigError(f"generate: {shape[0]} prompts x {generate[1]} new tokens is over "
                                  f"{MAX_GENERATED_TOKENS} tokens, which come back in the runner's one JSON line",
                                  hint="use fewer prompts (a few dozen decode as well)")
            generate = (int(generate[0]), int(generate[1]), int(shape[0]))
        record = _benchmark(profile, artifact, inputs, transport, outputs, generate, prompt_file)
    if skipped:
        record["generation_skipped"] = skipped
    return record


def _benchmark(profile: DeviceProfile, artifact: Artifact, inputs: Path | str | None, transport: Transport | None,
               outputs: Path | None, generate: tuple[int, int, int] | None, prompts: Path | None) -> dict[str, Any]:
    own = transport is None
    tr = transport or open_transport(profile)
    job_timeout = profile.connection.job_timeout
    lease = job_timeout + LEASE_GRACE_S
    try:
        # A waiter outwaits a whole lease (plus a poll): a holder that died mid-job leaves a lease that expires
        # within that time, so a crashed job never makes the next one give up as "busy".
        with device_lock(tr, profile.workdir, lease_s=lease, wait_s=lease + 30, device=profile.name) as owner:
            return _job(profile, tr, artifact, inputs, time.monotonic() + job_timeout, outputs, owner, generate,
                        prompts)
    finally:
        if own:
            tr.close()


def _job(profile: DeviceProfile, tr: Transport, artifact: Artifact, inputs: Path | str | None,
         deadline: float, outputs: Path | None = None, owner: str | None = None,
         generate: tuple[int, int, int] | None = None, prompts: Path | None = None) -> dict[str, Any]:
    context = f"{profile.name}: {Path(artifact.path).name}"

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeviceError(f"{context}: the job ran past connection.job_timeout="
                              f"{profile.connection.job_timeout:.0f}s", hint="raise it in the profile")
        return left

    # We hold the device lock, so no other job runs here: marked job folders older than STALE_JOB_MIN are leftovers
    # of a run that lost its link or its host mid-job (cleanup could not reach the device then). Unmarked ones are
    # not ours: they stay.
    tr.run(["sh", "-c", PURGE_JOBS_SH, "sh", profile.workdir, str(STALE_JOB_MIN)], timeout=60)
    job = tr.make_job_dir(profile.workdir)
    root = Path(artifact.path).parent
    try:
        tr.put(RUNNER_PATH, f"{job}/bench.py")
        for f in artifact.files or [artifact.path]:
            remaining()
            tr.put(Path(f), f"{job}/{Path(f).name}", sha256=artifact.expected_sha256(f), root=root)
        inputs_name = None
        if isinstance(inputs, str):          # already on the device: a path the caller owns
            inputs_name = inputs
        elif inputs is not None:
            inputs_name = "inputs.npz"       # this job's own copy: no other run can remove it
            tr.put(Path(inputs), f"{job}/{inputs_name}")
        if generate is not None and prompts is not None:
            tr.put(prompts, f"{job}/prompts.npz")
        argv = runner_argv(profile, tr.python(profile.python), job, Path(artifact.path).name,
                           artifact.backend, inputs_name, artifact.precision, outputs=outputs is not None,
                           generate=generate[:2] if generate else None)
        if owner is not None:  # where a breaker of our lease finds (and stops) this runner
            argv = runner_argv_with_pid(runner_pid_path(profile.workdir, owner), argv)
        records = []
        for _ in range(profile.bench.repeat):
            res = tr.run(argv, timeout=min(profile.connection.command_timeout, remaining()))
            record = parse_runner_output(res.stdout, context) if res.stdout.strip() else None
            if record is None or "error" in record or not res.ok:
                detail = (record or {}).get("error") or res.stderr.strip().splitlines()[-1:] or ["no output"]
                raise RemoteCommandError(f"{context}: runner failed (exit {res.exit_status}): {detail}",
                                         exit_status=res.exit_status, stderr=res.stderr)
            if generate is not None:
                bad = generation_problems(record.get("generation"), expect=generate)
                if bad:
                    raise RemoteCommandError(f"{context}: the runner's generation record is unusable: "
                                             f"{'; '.join(bad)}", hint="the board's runner is not edgepipe's: "
                                             "re-run so the checked runner is copied again")
            records.append(record)
        record = records[0]
        if len(records) > 1:
            record = repeat_check(records, profile.bench.repeat_tolerance)
        if outputs is not None and record.get("outputs"):
            _fetch_outputs(tr, job, Path(outputs), record["outputs"].get("parts"), context)
        return record
    finally:
        tr.remove_tree(job)


MAX_OUTPUT_PARTS = 128   # 2 GiB of outputs in 32 MiB parts is 64: a board that claims more is not believed


def _fetch_outputs(tr: Transport, job: str, dest: Path, parts: Any, context: str) -> None:
    """Every part of the runner's outputs (bench.write_outputs), each fetched under a temporary name, checked
    against the cap from its zip index before anything loads it (check_outputs_npz), and renamed, part 0 (which
    names the count) last, so a half-fetched set never looks complete. The count comes from the board: bounded."""
    from targets.runner.bench import part_path

    count = parts if parts is not None else 1
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_OUTPUT_PARTS:
        raise RemoteCommandError(f"{context}: the runner reports {str(parts)[:20]!r} output parts (1 to "
                                 f"{MAX_OUTPUT_PARTS} expected)", hint="the board's runner is not edgepipe's: "
                                 "re-run so the checked runner is copied again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for k in reversed(range(count)):
        final = Path(part_path(str(dest), k))
        tmp = Path(str(final) + ".part")
        try:
            tr.get(part_path(f"{job}/outputs.npz", k), tmp)
            check_outputs_npz(tmp, context)
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
