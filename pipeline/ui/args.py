"""Arguments several subcommands share: connection overrides and a process count."""

from __future__ import annotations

import argparse
from typing import Any


def conn_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in ("host", "user", "port", "key", "known_hosts")
            if getattr(args, k, None) is not None}


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes >= 1, got {text!r}")
    return int(text)


def add_conn(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection overrides (also EDGEPIPE_<DEVICE>_HOST, _USER, _PORT, _KEY)")
    g.add_argument("--host")
    g.add_argument("--user")
    g.add_argument("--port", type=int)
    g.add_argument("--key", help="private key file")
    g.add_argument("--known-hosts", dest="known_hosts", help="known_hosts file to trust")


def add_set(p: argparse.ArgumentParser, example: str = "--set stages.prune.ratio=0.3") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a recipe value, e.g. {example}")


def scale_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1], e.g. 0.1, got {text!r}")
    return value


def add_scale(p: argparse.ArgumentParser) -> None:
    """``--scale F``: the recipe's ``scale`` (pipeline/recipe/config.py; README "Scale")."""
    p.add_argument("--scale", type=scale_factor, metavar="F",
                   help="shorten the work, not what runs: epochs x F (at least 1), sample counts and search budgets "
                        "x F (with floors); every stage, backend and option kept; recorded in summary.json")


def with_scale(args: argparse.Namespace) -> list[str]:
    """The --set overrides with --scale appended as ``scale=F`` (the last word, as on the command line)."""
    return [*args.set, *([f"scale={args.scale}"] if getattr(args, "scale", None) is not None else [])]


# ------------------------------------------------------------------------------------ each subcommand's arguments
def args_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("--device", action="append", required=True,
                   help="profile name or file; repeat for a fleet (devices run concurrently)")
    p.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
    add_set(p)
    add_scale(p)
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.add_argument("--nproc", type=positive_int, metavar="N",
                   help="train the stages on N data-parallel processes on this machine (torchrun underneath; one "
                        "per GPU, gloo on CPU); for several machines launch `torchrun ... -m pipeline.cli run` instead")
    add_conn(p)


def args_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    add_set(p)
    add_scale(p)


def args_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("factory", help="module:callable returning your nn.Module (the module next to --out)")
    p.add_argument("--out", default="recipe.yaml", help="recipe to write (default recipe.yaml; never overwritten "
                   "without --force)")
    p.add_argument("--device", default="local", help="device profile whose backends the recipe lists")
    p.add_argument("--data", help="module:callable returning {train, calib, eval} datasets; its first eval item "
                   "gives the inputs (default: the one splits() next to --out)")
    p.add_argument("--input-shape", action="append", metavar="1,3,224,224", help="an input's shape, batch first "
                   "(repeat per forward() input) instead of reading the data")
    p.add_argument("--dtype", action="append", help="dtype of each --input-shape (default float32)")
    p.add_argument("--postprocess", help="module:callable decoding a detector's outputs (enables box mAP)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")


def args_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--device", required=True)
    p.add_argument("--inputs", help=".npz with x (and labels y) to measure accuracy too")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="measure N times in one job; medians further apart than bench.repeat_tolerance: invalid")
    p.add_argument("--allow-invalid", action="store_true",
                   help="exit 0 even when the measurement is not valid (default: exit 3)")
    add_conn(p)


def args_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("--device", action="append", required=True,
                   help="profile name or file; repeat for a fleet (boards are searched concurrently)")
    p.add_argument("--out", help="folder for search.json, search.html (default runs/<recipe>-search-<time>)")
    p.add_argument("--cache", help="shared cache of stages, exports and measurements (default $EDGEPIPE_CACHE or "
                   "~/.cache/edgepipe)")
    add_set(p, "--set 'search.space={prune.ratio: [0, 0.5]}'")
    add_scale(p)
    add_conn(p)


def args_none(p: argparse.ArgumentParser) -> None:
    """A subcommand without arguments."""


def args_backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="exit 2 when any backend family is not installed")


def args_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("device")
    p.add_argument("--trust", action="store_true", help="show the host key fingerprint and add it to known_hosts")
    add_conn(p)


def args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", help="run folders written by `edgepipe run --out`")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--regression-threshold", type=float, default=0.10,
                   help="flag a p50 latency worse by more than this fraction between runs (default 0.10)")


def args_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="only runs on this device")
    p.add_argument("--recipe", help="only runs of this recipe (its name)")
    p.add_argument("--limit", type=int, default=20, help="newest N runs (default 20)")
    p.add_argument("--add", action="append", metavar="RUN_DIR",
                   help="import an existing run folder into the store first (repeatable)")
    p.add_argument("--db", default=None, help="store URL or SQLite path (default: $EDGEPIPE_DB, else "
                   "~/.local/share/edgepipe/results.db)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def args_release(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="folder written by `edgepipe run --out`")
    p.add_argument("--device", default=None, help="device the bundle is for (must be the run's device)")
    p.add_argument("--dist", default="dist", help="output folder (default: dist/)")
    p.add_argument("--version", default=None,
                   help="bundle version (default: the summary's version, else the run id's timestamp)")
    p.add_argument("--allow-failed-gate", action="store_true",
                   help="release although the quality gate failed (recorded in the manifest)")
    p.add_argument("--key", default=None, help="Ed25519 private key (PEM) that signs the manifest (default: "
                   "EDGEPIPE_SIGNING_KEY, else ~/.config/edgepipe/release-ed25519.key, created on first use)")


def args_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a .tar.gz written by `edgepipe release`")
    p.add_argument("--pubkey", action="append", default=[], help="trusted release public key (.pub); repeatable")


def args_keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="private key file (default: ~/.config/edgepipe/release-ed25519.key)")
