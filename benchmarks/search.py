"""What a search costs: time per candidate (stages, export, device) and device measurements against exhaustive.

Runs ``edgepipe search`` on the digits demo (or RECIPE) for each device, optionally with a throw-away loopback sshd
as a second board (``--ssh-board``, tests/sshd.py: its device Python cannot import torch or edgepipe), then prints
one line per candidate and the totals. Exhaustive enumeration of the same space would measure every distinct
candidate; the estimate of its cost uses this run's mean host and device seconds per candidate.

    PYTHONPATH=$PWD python benchmarks/search.py [RECIPE] [--device local] [--ssh-board] [--out DIR] [--cache DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

from pipeline.search.engine import search
from tests import sshd as sshd_mod

ROOT = Path(__file__).resolve().parent.parent


def report(result: dict) -> None:
    print(f"\n== {result['recipe']} on {result['device']}: {result['status']}, {result['seconds']:.0f}s in all")
    print(f"  {'candidate':<44} {'status':<8} {'rung':<10} {'stages s':>8} {'export s':>8} {'device s':>8} "
          f"{'p90 ms':>8} {'acc':>6}")
    host, device = [], []
    for c in result["candidates"]:
        s = c["seconds"]
        lat = (c.get("latency_ms") or {}).get("p90")
        print(f"  {c['label'][:44]:<44} {c['status']:<8} {c['rung']:<10} {s['stages']:>8.1f} {s['export']:>8.1f} "
              f"{s['device']:>8.1f} {lat if lat is not None else '-':>8} {c.get('accuracy') or '-':>6}")
        host.append(s["stages"] + s["export"])
        if c["status"] in ("measured", "cached"):
            device.append(s["device"])
    n = result["counts"]
    mean_dev = statistics.fmean(device) if device else 0.0
    print(f"  device measurements: {n['device_measurements']} (new {n['measured_now']}, cached {n['from_cache']}) "
          f"vs {n['exhaustive']} for exhaustive enumeration of the same space "
          f"({n['device_measurements'] / max(n['exhaustive'], 1):.0%})")
    print(f"  host seconds: {sum(host):.0f} (mean {statistics.fmean(host) if host else 0:.1f}/candidate); device "
          f"seconds: {sum(device):.0f} (mean {mean_dev:.1f}/measurement); exhaustive would add about "
          f"{(n['exhaustive'] - n['device_measurements']) * mean_dev:.0f} device seconds")
    cmp = result.get("comparison") or {}
    if cmp:
        med = cmp["median_p90_ms"]
        print(f"  interleaved median p90: chosen {med['chosen']} ms · recipe as written {med.get('recipe_best')} ms · "
              f"original FP32 ONNX {med['original_fp32']} ms -> {cmp['speedup_vs_original_fp32']}x vs original, "
              f"{cmp.get('speedup_vs_recipe_best')}x vs the recipe")
    print(f"  Pareto front: {len(result['front'])} points; chosen {result['chosen']} -> {result.get('chosen_recipe')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "examples" / "digits" / "recipe.yaml"))
    ap.add_argument("--device", action="append", default=None)
    ap.add_argument("--ssh-board", action="store_true", help="add a loopback sshd board (1 thread) to the fleet")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=None, help="default: a fresh temporary cache (cold timings)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    devices = list(args.device or ["local"])
    with tempfile.TemporaryDirectory(prefix="edgepipe-search-bench-") as tmp:
        server = None
        if args.ssh_board:
            server = sshd_mod.start_server(Path(tmp) / "sshd")
            (Path(tmp) / "empty_ssh_config").write_text("")
            import os

            os.environ["EDGEPIPE_SSH_CONFIG"] = str(Path(tmp) / "empty_ssh_config")
            board = server.profile("board", Path(tmp))
            data = yaml.safe_load(board.read_text())  # the fixture's bench rules are for tests: use real ones
            data["bench"] = {"warmup": 20, "min_iterations": 200, "min_seconds": 1.0, "max_seconds": 30}
            data["connection"]["command_timeout"] = 300
            board.write_text(yaml.safe_dump(data))
            devices.append(str(board))
        try:
            out = Path(args.out) if args.out else Path(tmp) / "out"
            results = search(args.recipe, devices, out, args.set, cache=args.cache or Path(tmp) / "cache")
        finally:
            if server is not None:
                server.stop()
        for r in results:
            report(r)


if __name__ == "__main__":
    main()
