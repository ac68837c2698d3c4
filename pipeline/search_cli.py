"""``edgepipe search`` on the command line; kept light so building the parser never imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_search(args: argparse.Namespace) -> int:
    from pipeline.cli import _conn_overrides, with_scale
    from pipeline.search import search

    search(args.recipe, args.device, Path(args.out) if args.out else None, with_scale(args), _conn_overrides(args),
           args.cache)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from pipeline.cli import _add_conn, add_scale

    p = sub.add_parser("search", help="measured search over the recipe's search: space -> Pareto front, chosen "
                       "recipe per device")
    p.add_argument("recipe")
    p.add_argument("--device", action="append", required=True,
                   help="profile name or file; repeat for a fleet (boards are searched concurrently)")
    p.add_argument("--out", help="folder for search.json, search.html (default runs/<recipe>-search-<time>)")
    p.add_argument("--cache", help="shared cache of stages, exports and measurements (default $EDGEPIPE_CACHE or "
                   "~/.cache/edgepipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set 'search.space={prune.ratio: [0, 0.5]}'")
    add_scale(p)
    _add_conn(p)
    p.set_defaults(func=_cmd_search)
