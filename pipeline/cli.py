"""The ``edgepipe`` command. Every expected failure is an EdgeError: one message, the exit code of DESIGN §5."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pipeline
from pipeline.ui import args as arguments
from pipeline.ui.args import conn_overrides, with_scale
from pipeline.ui.console import routed
from targets.errors import EdgeError, printable
from targets.jsonio import strict_dumps


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.stages import distributed

    if args.nproc is not None and args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(args.nproc, distributed.strip_nproc(args.argv))
    with routed(what="edgepipe-run"):   # before the imports: their C++ start-up lines go to run.log too
        from pipeline.run import run

        summaries = run(args.recipe, args.device, Path(args.out) if args.out else None, with_scale(args),
                        conn_overrides(args))
    if args.json:
        print(strict_dumps(summaries if len(summaries) > 1 else summaries[0], "--json output", indent=2))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with routed(what="edgepipe-check"):   # the model and metric run once; what libraries print is not ours
        from pipeline.recipe.check import check

        recipe, facts = check(args.recipe, with_scale(args))
    stages = [n for n in ("distill", "prune", "quantize") if getattr(recipe.stages, n) is not None]
    inputs = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in recipe.model.input_specs)
    print(f"{args.recipe}: ok (recipe {recipe.name!r}, inputs: {inputs}, outputs: {facts.get('outputs')}, "
          f"metric: {recipe.task.metric}, stages: {', '.join(stages) or 'none'}, "
          f"backends: {', '.join(recipe.backends) if recipe.backends else 'the device profile list'})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    with routed(what="edgepipe-init"):   # the model runs once here
        from pipeline.recipe.init import init_recipe

        draft, recipe, facts = init_recipe(args.factory, Path(args.out), args.device, args.data, args.input_shape,
                                           args.dtype, args.postprocess, args.force)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    inputs = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in recipe.model.input_specs)
    print(f"{args.out}: written and checked (inputs: {inputs}, outputs: {facts.get('outputs')}, metric: "
          f"{recipe.task.metric}, backends: {', '.join(recipe.backends or [])}); next: edgepipe run {args.out} "
          f"--device {args.device}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    with routed(what="edgepipe-bench"):
        from pipeline.phases.measure import bench_artifact

        rec = bench_artifact(args.artifact, args.device, conn_overrides(args),
                             Path(args.inputs) if args.inputs else None, repeat=args.repeat)
    if args.json:
        print(strict_dumps(rec, "--json output"))
    else:
        lat = rec["latency_ms"]
        print(printable(f"{Path(args.artifact).name} on {args.device}: p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
                        f"p99 {lat['p99']} ms, n={lat['n']} ({rec['runtime']}, {rec['threads']} threads, "
                        f"providers {','.join(rec.get('providers') or [])}); valid: {rec['valid']}"
                        + (f" ({'; '.join(rec['invalid_reasons'])})" if rec.get("invalid_reasons") else "")))
        if "accuracy" in rec:
            print(f"accuracy on the given inputs: {rec['accuracy']:.4f} (n={rec.get('n_eval')})")
    if not rec.get("valid"):  # exit 3: the figure fails its own measurement rules, so no gate could pass on it
        print(printable(f"edgepipe: error: the measurement is not valid: {'; '.join(rec.get('invalid_reasons') or [])}"
                        " (exit 3; pass --allow-invalid to exit 0 anyway)"), file=sys.stderr)
        return 0 if args.allow_invalid else 3
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from targets.profiles import list_profiles, load_profile

    for name, path in list_profiles().items():
        try:
            prof = load_profile(str(path))
            where = prof.connection.transport if prof.is_local else f"ssh {prof.connection.host}"
            print(printable(f"{name:<18} {prof.arch:<8} {where:<22} {', '.join(prof.backends)}  - {prof.description}"))
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

    profile = load_profile(args.device, conn_overrides(args))
    checks = doctor(profile, trust=args.trust)
    print(format_checks(profile, checks))
    return 0 if all(c.ok for c in checks) else 4


def cmd_search(args: argparse.Namespace) -> int:
    with routed(what="edgepipe-search"):   # moved to the search folder's search.log once it is known
        from pipeline.search.engine import search

        search(args.recipe, args.device, Path(args.out) if args.out else None, with_scale(args), conn_overrides(args),
               args.cache)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.results.report import write_report

    print(write_report([Path(d) for d in args.run_dirs], Path(args.out), args.regression_threshold))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from pipeline.results.history import format_history, history
    from pipeline.results.rundir import find_run_dirs
    from pipeline.results.store import open_store, record_summary, store_errors
    from targets.jsonio import strict_dumps

    store = open_store(args.db)
    try:
        for given in args.add or []:
            for run_dir in find_run_dirs(given):
                record_summary(run_dir=run_dir, store=store)
        rows = store_errors(lambda st: history(st, args.device, args.recipe, args.limit))(store)
    finally:
        store.close()
    print(strict_dumps(rows, "--json output", indent=2) if args.json else format_history(rows))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from pipeline.release.bundle import build_bundle, check_bundle
    from pipeline.results.headline import headline
    from pipeline.results.rundir import artifact_name, find_run_dirs, load_summary
    from targets.artifact import sha256_file

    path = build_bundle(args.run_dir, args.device, Path(args.dist), args.version, args.allow_failed_gate, args.key)
    manifest = check_bundle(path)
    summary = load_summary(find_run_dirs(args.run_dir, args.device)[0])
    shipped = next((a for a in summary["artifacts"] if artifact_name(a) == manifest["pick"]["overall"]), None)
    print(headline(summary, shipped)["text"])   # the shipped artifact against the original, first
    print(f"{path}  (pick {manifest['pick']['overall']}; {len(manifest['files'])} files; "
          f"sha256 {sha256_file(path)}; signed by {manifest['_signature']['key_id']})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.release.bundle import check_bundle
    from pipeline.release.signing import load_public_key

    trusted = [load_public_key(Path(p).expanduser()) for p in args.pubkey] if args.pubkey else None
    manifest = check_bundle(args.bundle, trusted)
    sig = manifest["_signature"]
    who = (f"signed by trusted key {sig['key_id']}" if sig["trusted"] else
           f"signature valid for key {sig['key_id']}, NOT checked against a trusted key (pass --pubkey KEY.pub)")
    print(f"{args.bundle}: OK ({len(manifest['files'])} files verified; {manifest['name']} for {manifest['device']} "
          f"version {manifest['version']}, gate {'passed' if manifest['gate'].get('passed') else 'FAILED'}; {who})")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from pipeline.release.signing import default_key_path, generate_key

    out = Path(args.out).expanduser() if args.out else default_key_path()
    pub = generate_key(out)
    print(f"{out}: new Ed25519 release key (keep it private); give {pub} to whoever runs `edgepipe verify --pubkey`")
    return 0


# ---------------------------------------------------------------------------------------------- the parser
Handler = Callable[[argparse.Namespace], int]

#: Every subcommand, in the order `edgepipe --help` lists them: (name, help, arguments, handler). One literal list;
#: handlers import their modules lazily, so building the parser never imports torch.
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler], ...] = (
    ("run", "full pipeline: stages, export, check, benchmark -> summary.json", arguments.args_run, cmd_run),
    ("check", "validate a recipe and report every problem at once", arguments.args_check, cmd_check),
    ("init", "write a commented recipe for your own model factory (run once to learn its inputs), then check it",
     arguments.args_init, cmd_init),
    ("bench", "benchmark one artifact on one device", arguments.args_bench, cmd_bench),
    ("devices", "list device profiles", arguments.args_none, cmd_devices),
    ("backends", "list the backends, their file types, and whether this machine has the exporter and runtime of "
     "each", arguments.args_backends, cmd_backends),
    ("doctor", "check a device: reachable, host key, python, runtimes, clocks, temperature", arguments.args_doctor,
     cmd_doctor),
    ("history", "past runs from the results store with their headline figures", arguments.args_history, cmd_history),
    ("report", "HTML report with accuracy/latency/size plots for one or more runs", arguments.args_report, cmd_report),
    ("release", "build a reproducible release bundle from a run folder", arguments.args_release, cmd_release),
    ("verify", "check a release bundle's checksums and contents", arguments.args_verify, cmd_verify),
    ("keygen", "create an Ed25519 release signing key (and its .pub)", arguments.args_keygen, cmd_keygen),
    ("search", "measured search over the recipe's search: space -> Pareto front, chosen recipe per device",
     arguments.args_search, cmd_search),
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgepipe", description="Compress, export and benchmark PyTorch models on "
                                 "edge devices.")
    ap.add_argument("--version", action="version", version=f"edgepipe {pipeline.__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, handler in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=handler)
    return ap


def _quiet_libraries() -> None:
    """Exporters log warnings about optional packages (torchvision) that say nothing to our users."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torch.onnx", "torch._export", "torch.export", "nncf", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a CI cancel, systemd, `kill`): the same unwinding as Ctrl-C, so the device's runner is killed, its job
    folder removed, its lock released and the run's store row closed as ``interrupted``; afterwards the process still
    ends by SIGTERM, as its parent (a shell, the --nproc launcher) expects."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated()


def _sigterm_as_interrupt() -> None:
    """Install the handler in the main thread, unless someone else installed one of their own."""
    import threading

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None, _terminate):
        signal.signal(signal.SIGTERM, _terminate)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    _sigterm_as_interrupt()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except EdgeError as exc:
        if os.environ.get("RANK", "0") == "0":   # under torchrun every rank fails alike: rank 0 says it once
            print(f"edgepipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None:   # not about a path the user gave: a bug, keep its traceback
            raise
        # a path given as an argument or in the environment that is a file, read-only or full (`--dist FILE`)
        if os.environ.get("RANK", "0") == "0":
            print(f"edgepipe: error: {exc.filename}: {exc.strerror or type(exc).__name__} (give a writable folder "
                  "path)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = ("finished stages are cached and a re-run resumes from them" if args.command == "run" else
                "the device's job folder and lock were cleaned up" if args.command == "bench" else "nothing was kept")
        print(f"edgepipe: {'terminated' if isinstance(exc, _Terminated) else 'interrupted'}; {what}", file=sys.stderr)
        if isinstance(exc, _Terminated):  # end by the signal itself (a launcher reads a negative code as "stopped")
            sys.stderr.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        return 130


if __name__ == "__main__":
    sys.exit(main())
