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
