"""Does going over SSH change the figure? One ONNX artifact, the same runner and rules, local vs loopback sshd.

The SSH path starts a throw-away OpenSSH server on 127.0.0.1 (tests/sshd.py) whose device Python cannot import torch
or edgepipe, pushes the artifact with the SSH transport and runs the on-device runner there. Both medians should agree
within 10 %: the transport must add nothing to the timed loop. Rounds alternate local/ssh to spread any drift.

    PYTHONPATH=$PWD python benchmarks/ssh_vs_local.py [--model resnet18] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.zoo import ZOO
from targets.artifact import Artifact
from targets.device import benchmark
from targets.profiles import load_profile
from tests import sshd as sshd_mod


def export(name: str, size: int, out: Path) -> Artifact:
    model = ZOO[name]().eval()
    path = out / f"{name}.fp32.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), dynamo=True, external_data=False)
    return Artifact.from_files(path, backend="onnx", precision="fp32", produced_by="benchmarks/ssh_vs_local")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", choices=sorted(ZOO))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="bench.min_seconds for every run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rules = {"warmup": 10, "min_iterations": 50, "min_seconds": args.seconds, "max_seconds": 120}
    runtime = {"threads": args.threads, "onnx_providers": ["CPUExecutionProvider"]}
    with tempfile.TemporaryDirectory(prefix="ssh-vs-local-") as tmp:
        root = Path(tmp)
        art = export(args.model, args.size, root)
        print(f"artifact {Path(art.path).name}: {art.bytes / 2**20:.1f} MiB, sha256 {art.sha256[:12]}")
        local_file = root / "here.yaml"
        local_file.write_text(yaml.safe_dump({"name": "here", "connection": {"transport": "local"},
                                              "python": "current", "workdir": str(root / "local-work"),
                                              "backends": ["onnx-fp32"], "runtime": runtime, "bench": rules}))
        server = sshd_mod.start_server(root / "sshd")
        (root / "empty_ssh_config").write_text("")  # ignore the user's ~/.ssh/config for this loopback server
        os.environ["EDGEPIPE_SSH_CONFIG"] = str(root / "empty_ssh_config")
        try:
            ssh_file = server.profile("loopback", root)
            data = yaml.safe_load(ssh_file.read_text())
            data.update(runtime=runtime, bench=rules)
            ssh_file.write_text(yaml.safe_dump(data))
            profiles = {"local": load_profile(str(local_file)), "ssh": load_profile(str(ssh_file))}
            records: dict[str, list[dict]] = {"local": [], "ssh": []}
            for r in range(args.rounds):
                for kind, prof in profiles.items():
                    t0 = time.perf_counter()
                    rec = benchmark(prof, art)
                    lat = rec["latency_ms"]
                    records[kind].append(rec)
                    load = (rec["state"]["before"].get("loadavg") or [float("nan")])[0]
                    print(f"round {r + 1} {kind:5s}: p50 {lat['p50']:.3f} p90 {lat['p90']:.3f} p99 {lat['p99']:.3f} "
                          f"ms n={lat['n']} valid={rec['valid']} load {load:.1f} job {time.perf_counter() - t0:.1f}s")
        finally:
            server.stop()
    env = records["ssh"][0]["environment"]
    print(f"runtime {records['ssh'][0]['runtime']}, providers {env['providers']}, threads {env['threads']}, "
          f"{env['os']}")
    # On a shared machine a round is either undisturbed or shares a core; the best round shows the figure itself,
    # the median shows what a user would see. Both are printed; neither is adjusted.
    for label, pick in (("median", statistics.median), ("best", min)):
        fig = {k: pick(rec["latency_ms"]["p50"] for rec in v) for k, v in records.items()}
        diff = (fig["ssh"] - fig["local"]) / fig["local"] * 100
        print(f"{label} p50 over {args.rounds} rounds: local {fig['local']:.3f} ms, ssh {fig['ssh']:.3f} ms, "
              f"ssh vs local {diff:+.1f}% ({'within' if abs(diff) <= 10 else 'OUTSIDE'} 10%)")


if __name__ == "__main__":
    main()
