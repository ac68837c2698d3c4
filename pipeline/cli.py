"""The ``edgepipe`` command. Every expected failure is an EdgeError: one message, the exit code of DESIGN §5."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline
from targets.errors import EdgeError


def _conn_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in ("host", "user", "port", "key", "known_hosts")
            if getattr(args, k, None) is not None}


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes >= 1, got {text!r}")
    return int(text)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1], e.g. 0.1, got {text!r}")
    return value


def add_scale(p: argparse.ArgumentParser) -> None:
    """``--scale F``: the recipe's ``scale`` (pipeline/config.py scale_recipe; README "Scale")."""
    p.add_argument("--scale", type=_scale, metavar="F",
                   help="shorten the work, not what runs: epochs x F (at least 1), sample counts and search budgets "
                        "x F (with floors); every stage, backend and option kept; recorded in summary.json")


def with_scale(args: argparse.Namespace) -> list[str]:
    """The --set overrides with --scale appended as ``scale=F`` (the last word, as on the command line)."""
    return [*args.set, *([f"scale={args.scale}"] if getattr(args, "scale", None) is not None else [])]


def _add_conn(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection overrides (also EDGEPIPE_<DEVICE>_HOST, _USER, _PORT, _KEY)")
    g.add_argument("--host")
    g.add_argument("--user")
    g.add_argument("--port", type=int)
    g.add_argument("--key", help="private key file")
    g.add_argument("--known-hosts", dest="known_hosts", help="known_hosts file to trust")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import distributed

    if args.nproc is not None and args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(args.nproc, distributed.strip_nproc(args.argv))
    from pipeline.run import run

    summaries = run(args.recipe, args.device, Path(args.out) if args.out else None, with_scale(args),
                    _conn_overrides(args))
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.check import check

    recipe, facts = check(args.recipe, with_scale(args))
    stages = [n for n in ("distill", "prune", "quantize") if getattr(recipe.stages, n) is not None]
    inputs = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in recipe.model.input_specs)
    print(f"{args.recipe}: ok (recipe {recipe.name!r}, inputs: {inputs}, outputs: {facts.get('outputs')}, "
          f"metric: {recipe.task.metric}, stages: {', '.join(stages) or 'none'}, "
          f"backends: {', '.join(recipe.backends) if recipe.backends else 'the device profile list'})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.run import bench_artifact

    rec = bench_artifact(args.artifact, args.device, _conn_overrides(args), Path(args.inputs) if args.inputs else None,
                         repeat=args.repeat)
    if args.json:
        print(json.dumps(rec))
    else:
        lat = rec["latency_ms"]
        print(f"{Path(args.artifact).name} on {args.device}: p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
              f"p99 {lat['p99']} ms, n={lat['n']} ({rec['runtime']}, {rec['threads']} threads, "
              f"providers {','.join(rec.get('providers') or [])}); valid: {rec['valid']}"
              + (f" ({'; '.join(rec['invalid_reasons'])})" if rec.get("invalid_reasons") else ""))
        if "accuracy" in rec:
            print(f"accuracy on the given inputs: {rec['accuracy']:.4f} (n={rec.get('n_eval')})")
    if not rec.get("valid"):  # exit 3: the figure fails its own measurement rules, so no gate could pass on it
        print(f"edgepipe: error: the measurement is not valid: {'; '.join(rec.get('invalid_reasons') or [])}"
              " (exit 3; pass --allow-invalid to exit 0 anyway)", file=sys.stderr)
        return 0 if args.allow_invalid else 3
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from targets.profiles import list_profiles, load_profile

    for name, path in list_profiles().items():
        try:
            prof = load_profile(str(path))
            where = prof.connection.transport if prof.is_local else f"ssh {prof.connection.host}"
            print(f"{name:<18} {prof.arch:<8} {where:<22} {', '.join(prof.backends)}  - {prof.description}")
        except EdgeError as exc:
            print(f"{name:<18} INVALID: {exc}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    """The capability table, with what this machine can export and run; ``--strict`` exits 2 when a family is
    unusable here (a CI step that needs every backend can fail early, naming the extra)."""
    from targets import CAPABILITIES, installed

    print(f"{'backends':<46}{'file':<9}here")
    missing = []
    for family, cap in CAPABILITIES.items():
        versions = {m: installed(m) for m in dict.fromkeys((cap["runtime"], cap["export_module"]))}
        absent = [m for m, v in versions.items() if not v]
        if absent:
            how = f"pip install 'edgepipe[{cap['extra']}]'" if cap["extra"] else "pip install edgepipe"
            state = f"MISSING {', '.join(absent)}: {how}"
            missing.append(family)
        else:
            state = ", ".join(f"{m} {v}" for m, v in versions.items())
        names = ", ".join(f"{family}-{p}" for p in cap["precisions"])
        print(f"{names:<46}{cap['suffix']:<9}{state}")
    return 2 if missing and args.strict else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from targets.doctor import doctor, format_checks
    from targets.profiles import load_profile

    profile = load_profile(args.device, _conn_overrides(args))
    checks = doctor(profile, trust=args.trust)
    print(format_checks(profile, checks))
    return 0 if all(c.ok for c in checks) else 4


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgepipe", description="Compress, export and benchmark PyTorch models on "
                                 "edge devices.")
    ap.add_argument("--version", action="version", version=f"edgepipe {pipeline.__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="full pipeline: stages, export, check, benchmark -> summary.json")
    p.add_argument("recipe")
    p.add_argument("--device", action="append", required=True,
                   help="profile name or file; repeat for a fleet (devices run concurrently)")
    p.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set stages.prune.ratio=0.3")
    add_scale(p)
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.add_argument("--nproc", type=_positive_int, metavar="N",
                   help="train the stages on N data-parallel processes on this machine (torchrun underneath; one "
                        "per GPU, gloo on CPU); for several machines launch `torchrun ... -m pipeline.cli run` instead")
    _add_conn(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a recipe and report every problem at once")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_scale(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="benchmark one artifact on one device")
    p.add_argument("artifact")
    p.add_argument("--device", required=True)
    p.add_argument("--inputs", help=".npz with x (and labels y) to measure accuracy too")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="measure N times in one job; medians further apart than bench.repeat_tolerance: invalid")
    p.add_argument("--allow-invalid", action="store_true",
                   help="exit 0 even when the measurement is not valid (default: exit 3)")
    _add_conn(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("devices", help="list device profiles")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("backends", help="list the backends, their file types, and whether this machine has the "
                       "exporter and runtime of each")
    p.add_argument("--strict", action="store_true", help="exit 2 when any backend family is not installed")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("doctor", help="check a device: reachable, host key, python, runtimes, clocks, temperature")
    p.add_argument("device")
    p.add_argument("--trust", action="store_true", help="show the host key fingerprint and add it to known_hosts")
    _add_conn(p)
    p.set_defaults(func=cmd_doctor)

    for register in _extension_registrars():
        register(sub)
    return ap


def _extension_registrars() -> list[Callable[[Any], None]]:
    """Subcommands that live with their modules (history, report, release, verify, search)."""
    out = []
    for module in ("pipeline.store", "pipeline.report", "pipeline.release", "pipeline.search_cli"):
        try:
            mod = __import__(module, fromlist=["register_cli"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if hasattr(mod, "register_cli"):
            out.append(mod.register_cli)
    return out


def _quiet_libraries() -> None:
    """Exporters log warnings about optional packages (torchvision) that say nothing to our users."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torch.onnx", "torch._export", "torch.export", "nncf", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except EdgeError as exc:
        if os.environ.get("RANK", "0") == "0":   # under torchrun every rank fails alike: rank 0 says it once
            print(f"edgepipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        what = ("finished stages are cached and a re-run resumes from them" if args.command == "run" else
                "the device's job folder and lock were cleaned up" if args.command == "bench" else "nothing was kept")
        print(f"edgepipe: interrupted; {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
