"""The three field scenarios against the numbers the surveys claim: a YOLO-style detector, a ViT with attention heads
pruned, and a ResNet -> ShuffleNet inspection chain (examples/detect, examples/vit, examples/inspect).

For each scenario it builds the chain in this process with the project's own stages and exporters (cached under
``--work``; the teachers in each example's .cache/) -- or takes the INT8 artifacts of a finished ``edgepipe run``
folder (``--run-dir``) -- then measures, on this host:

- the task metric of every artifact on the eval set (its runtime, batch 1, outputs scored on the host);
- latency: the FP32 teacher (ONNX Runtime) and every artifact, interleaved round by round in one process, batch 1,
  the same thread count, a busy-wait gap between contenders (see benchmarks/backends.py for why), n and p50/p90;
- parameters and MACs (Torch-Pruning's counter) of the teacher and of the final model, and file bytes -- printed
  separately, because the "177M -> 1.2M" claim does not say which; we compare parameters.

    python benchmarks/scenarios.py [--scenario detect,vit,inspect] [--work runs/scenarios] [--threads 2]
    python benchmarks/scenarios.py --scenario inspect --run-dir runs/inspect     # artifacts of a finished run
    python benchmarks/scenarios.py --run-dir /tmp      # /tmp/detect, /tmp/vit, /tmp/inspect from `edgepipe run`
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.backends import _interleaved, _versions  # noqa: E402
from pipeline.stages.common import footprint  # noqa: E402
from targets import get_exporter  # noqa: E402
from targets.export_config import ExportConfig  # noqa: E402
from targets.runner import bench  # noqa: E402

BACKENDS = ("onnx", "openvino", "tflite")


def example(folder: str, name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def cached(path: Path, build: Callable[[], torch.nn.Module], model: torch.nn.Module) -> torch.nn.Module:
    """Load ``model``'s weights from ``path``, or build, train and save them (atomically)."""
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    start = time.perf_counter()
    model = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path.with_suffix(".part"))
    os.replace(path.with_suffix(".part"), path)
    print(f"  built {path.name} in {time.perf_counter() - start:.0f}s", flush=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------- the chains
def chain_detect(work: Path, prune_ratio: float, student_chain: bool) -> dict[str, Any]:
    dm, dd, db = example("detect", "detect_models"), example("detect", "detect_data"), example("detect", "detect_boxes")
    from pipeline.stages.prune import structured_prune

    data = dd.splits()
    teacher = dm.trained_teacher()
    x = torch.zeros(1, 1, dm.IMAGE, dm.IMAGE)
    torch.manual_seed(0)
    stages: dict[str, torch.nn.Module] = {}
    if student_chain:   # the student architecture trained from scratch with KD (10 epochs)
        base = stages["student (KD)"] = cached(work / "student.pt", lambda: dm.train(
            dm.student(), data=data["train"], teacher_model=teacher), dm.student())
    else:               # the teacher itself, channel-pruned, recovered by KD (the project's default student)
        base = teacher
    final = base
    if prune_ratio > 0:
        def pruned() -> torch.nn.Module:
            return structured_prune(copy.deepcopy(base), x, ratio=prune_ratio, round_to=8, ignore=dm.OUTPUT_LAYERS)

        tag = "student" if student_chain else "teacher"
        final = cached(work / f"{tag}-pruned-{prune_ratio}.pt", lambda: dm.train(
            pruned(), epochs=4, lr=1e-3, data=data["train"], teacher_model=teacher), pruned())

    def score(outputs: list[np.ndarray]) -> float:
        dets = db.postprocess([np.concatenate(outputs)])
        return db.coco_map(dets, [t for _, t in data["eval"]])["map50_95"]

    tag = f"detect-{'student' if student_chain else 'teacher'}-p{prune_ratio}"   # artifact names per chain
    return {"teacher": teacher, "final": final, "stages": stages, "example": x, "tag": tag,
            "calib": np.stack([data["calib"][i][0].numpy() for i in range(len(data["calib"]))]),
            "eval": np.stack([img.numpy() for img, _ in data["eval"]]), "score": score, "metric": "mAP@0.5:0.95"}


def _classification(data: dict[str, Any], teacher: torch.nn.Module, final: torch.nn.Module,
                    stages: dict[str, torch.nn.Module]) -> dict[str, Any]:
    labels = np.asarray([int(y) for _, y in data["eval"]])

    def score(outputs: list[np.ndarray]) -> float:
        return float((np.concatenate(outputs).reshape(len(labels), -1).argmax(1) == labels).mean())

    return {"teacher": teacher, "final": final, "stages": stages, "example": torch.zeros(1, 1, 32, 32),
            "calib": np.stack([data["calib"][i][0].numpy() for i in range(len(data["calib"]))]),
            "eval": np.stack([x.numpy() for x, _ in data["eval"]]), "score": score, "metric": "top-1"}


def context_from_run(name: str, run_dir: Path) -> dict[str, Any]:
    """Teacher, eval data and score for ``name``; the final model's params/MACs from the run's last stage record
    (no chain is rebuilt: the artifacts measured are the run's own)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    if name == "detect":
        dm, db = example("detect", "detect_models"), example("detect", "detect_boxes")
        data, teacher = example("detect", "detect_data").splits(), dm.trained_teacher()

        def score(outputs: list[np.ndarray]) -> float:
            return db.coco_map(db.postprocess([np.concatenate(outputs)]), [t for _, t in data["eval"]])["map50_95"]

        c = {"teacher": teacher, "example": torch.zeros(1, 1, dm.IMAGE, dm.IMAGE), "score": score,
             "eval": np.stack([img.numpy() for img, _ in data["eval"]]), "metric": "mAP@0.5:0.95", "stages": {},
             "calib": np.stack([data["calib"][i][0].numpy() for i in range(len(data["calib"]))])}
    else:
        mod = example(name, "vit_models" if name == "vit" else "inspect_models")
        data = (example("vit", "vit_data") if name == "vit" else mod).splits()
        c = _classification(data, mod.trained_teacher(), None, {})   # type: ignore[arg-type]
    last = summary["stages"][-1] if summary["stages"] else summary["baseline"]
    for st in summary["stages"]:
        if st.get("params"):
            last = st
    c.update(final=None, final_params=last["params"], final_macs=last["macs"], summary=summary)
    if name == "vit":
        c["heads"] = None
    return c


def chain_vit(work: Path) -> dict[str, Any]:
    from pipeline.stages.distill import DistillConfig, distill
    from pipeline.stages.heads import head_counts
    from pipeline.stages.prune import PruneConfig, prune, structured_prune

    vm, vd = example("vit", "vit_models"), example("vit", "vit_data")
    data, teacher, x = vd.splits(), vm.trained_teacher(), torch.zeros(1, 1, 32, 32)
    torch.manual_seed(0)
    student = cached(work / "student.pt", lambda: distill(
        teacher, vm.student(), data, DistillConfig(student="vit_models:student", epochs=20, lr=2e-3), x), vm.student())
    cfg = PruneConfig(ratio=0.25, head_pruning_ratio=0.5, round_to=8, finetune_epochs=6, latency_guard=False)
    shape = structured_prune(copy.deepcopy(student), x, ratio=cfg.ratio, head_ratio=cfg.head_pruning_ratio,
                             round_to=cfg.round_to)
    pruned = cached(work / "pruned.pt", lambda: prune(student, x, data, cfg, teacher=teacher)[0], shape)
    out = _classification(data, teacher, pruned, {"student (KD)": student})
    out["heads"] = (head_counts(student), head_counts(pruned))
    return out


def chain_inspect(work: Path) -> dict[str, Any]:
    from pipeline.stages.distill import DistillConfig, distill

    im = example("inspect", "inspect_models")
    data, teacher, x = im.splits(), im.trained_teacher(), torch.zeros(1, 1, 32, 32)
    torch.manual_seed(0)
    student = cached(work / "student.pt", lambda: distill(
        teacher, im.student(), data, DistillConfig(student="inspect_models:student", epochs=20), x), im.student())
    return _classification(data, teacher, student, {})


# --------------------------------------------------------------------------------------------- measurements
def run_session(session: bench.Session, inputs: np.ndarray) -> list[np.ndarray]:
    return [session.run(inputs[i:i + 1]) for i in range(len(inputs))]


SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}


def _export(backend: str, model: torch.nn.Module, c: dict[str, Any], cfg: ExportConfig, out: Path) -> Path:
    """Export once: an artifact already in ``out`` (same name) is reused, so a rerun only measures."""
    path = out / f"{cfg.name}.{cfg.precision}{SUFFIX[backend]}"
    if not path.exists():
        t0 = time.perf_counter()
        path = Path(get_exporter(backend)(model, (c["example"],), c["calib"], cfg, out).path)
        print(f"  exported {path.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def export_all(name: str, c: dict[str, Any], out: Path, backends: list[str]) -> dict[str, Path]:
    arts = {"teacher onnx-fp32": _export("onnx", c["teacher"], c, ExportConfig(name=f"{name}-teacher"), out)}
    for b in backends:
        for precision in ("fp32", "int8"):
            cfg = ExportConfig(name=c.get("tag", name), precision=precision)
            arts[f"{b}-{precision}"] = _export(b, c["final"], c, cfg, out)
    return arts


def artifacts_from_run(run_dir: Path) -> dict[str, Path]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {f"{a['backend']}-{a['precision']}": run_dir / a["file"] for a in summary["artifacts"]
            if a.get("precision") == "int8"}


def file_bytes(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def measure(name: str, c: dict[str, Any], arts: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    sessions = {k: bench.load(str(p), None, threads=args.threads) for k, p in arts.items()}
    with torch.no_grad():
        ref = [c["teacher"](torch.from_numpy(c["eval"][i:i + 1])).numpy() for i in range(len(c["eval"]))]
        fin = ([c["final"](torch.from_numpy(c["eval"][i:i + 1])).numpy() for i in range(len(c["eval"]))]
               if c["final"] is not None else None)
    metric = {"teacher torch-fp32": c["score"](ref)}
    if fin is not None:
        metric["final torch-fp32"] = c["score"](fin)
    for k, s in sessions.items():
        metric[k] = c["score"](run_session(s, c["eval"]))
        print(f"  {k}: {c['metric']} {metric[k]:.4f}", flush=True)
    runs = {k: s.run for k, s in sessions.items()}
    samples = _interleaved(runs, c["eval"][:64], rounds=args.rounds, iters=args.iters, warmup=args.warmup,
                           gap=args.gap)
    stats = {k: bench.latency_stats(v) for k, v in samples.items()}
    tp, tm = footprint(c["teacher"], c["example"])
    fp, fm = footprint(c["final"], c["example"]) if c["final"] is not None else (c["final_params"], c["final_macs"])
    return {"metric": metric, "latency": stats, "bytes": {k: file_bytes(p) for k, p in arts.items()},
            "params": (tp, fp), "macs": (tm, fm)}


def report(name: str, c: dict[str, Any], m: dict[str, Any]) -> dict[str, bool]:
    lat, base = m["latency"], m["latency"]["teacher onnx-fp32"]
    t_metric = m["metric"]["teacher torch-fp32"]
    print(f"\n== {name}: {c['metric']} on {len(c['eval'])} eval samples; latency batch 1, {ARGS.threads} threads, "
          f"interleaved, n per contender below")
    print(f"{'artifact':<22}{c['metric']:>13}{'p50 ms':>9}{'p90 ms':>9}{'n':>6}{'x teacher':>10}{'bytes':>11}")
    for k in m["metric"]:
        st = lat.get(k)
        row = f"{k:<22}{m['metric'][k]:>13.4f}"
        row += f"{st['p50']:>9.3f}{st['p90']:>9.3f}{st['n']:>6}{base['p50'] / st['p50']:>10.2f}" if st else " " * 34
        print(row + (f"{m['bytes'][k]:>11,}" if k in m["bytes"] else ""))
    (tp, fp), (tm, fm) = m["params"], m["macs"]
    print(f"params {tp:,} -> {fp:,} ({tp / fp:.1f}x fewer); MACs {tm:,} -> {fm:,} ({tm / fm:.1f}x fewer)")
    int8 = [k for k in lat if k.endswith("int8")]
    best = min(int8, key=lambda k: lat[k]["p50"])
    speedup = base["p50"] / lat[best]["p50"]
    size = m["bytes"][best] / m["bytes"]["teacher onnx-fp32"]
    drop = 100 * (t_metric - m["metric"][best])
    print(f"best INT8: {best}: {speedup:.2f}x faster (p50) than the FP32 teacher on ONNX Runtime, {size:.3f}x its "
          f"bytes, {c['metric']} drop {drop:+.2f} points against the FP32 teacher in torch")
    claims: dict[str, bool] = {}
    if name == "detect":
        claims = {">= 2x faster": speedup >= 2, "<= 1/4 size": size <= 0.25, "<= 1.0 mAP@0.5:0.95 drop": drop <= 1.0}
    elif name == "inspect":
        claims = {">= 4x fewer params": tp / fp >= 4, ">= 3x faster": speedup >= 3, "<= 1.0 point drop": drop <= 1.0}
    elif name == "vit":
        for b in BACKENDS:
            if f"{b}-int8" in m["metric"] and f"{b}-fp32" in m["metric"]:
                d = 100 * (m["metric"][f"{b}-fp32"] - m["metric"][f"{b}-int8"])
                claims[f"{b}-int8 within 1.0 point of {b}-fp32 ({d:+.2f})"] = d <= 1.0
        if c["heads"] is not None:
            before, after = c["heads"]
            print(f"heads per block: student {sorted(set(before.values()))} -> pruned {sorted(set(after.values()))}")
            claims["heads really removed"] = all(after[k] < before[k] for k in before)
    for k, ok in claims.items():
        print(f"  claim {k}: {'MET' if ok else 'NOT MET'}")
    return claims


ARGS = argparse.Namespace()


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="detect,vit,inspect")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "scenarios")
    ap.add_argument("--run-dir", type=Path, help="take the INT8 artifacts of this finished edgepipe run (or of "
                    "RUN_DIR/<scenario> for each scenario); the chain is not rebuilt")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--detect-prune", type=float, default=0.3, help="channel-prune ratio of the detector")
    ap.add_argument("--detect-student", action="store_true",
                    help="prune the KD-trained small detector instead of the teacher (2.4 points lower here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads while training (1 on a busy host)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--gap", type=float, default=0.05)
    ARGS = args = ap.parse_args()
    torch.set_num_threads(args.train_threads)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"{_versions()}")
    failed = False
    for name in args.scenario.split(","):
        work = args.work / name
        print(f"\n== {name}: building the chain (cached in {work})", flush=True)
        chains = {"detect": lambda w: chain_detect(w, args.detect_prune, args.detect_student), "vit": chain_vit,
                  "inspect": chain_inspect}
        run_dir = args.run_dir / name if args.run_dir and (args.run_dir / name / "summary.json").exists() \
            else args.run_dir
        c = context_from_run(name, run_dir) if run_dir else chains[name](work)
        if run_dir:
            arts = {"teacher onnx-fp32": _export("onnx", c["teacher"], c, ExportConfig(name=f"{name}-teacher"),
                                                 work / "artifacts"), **artifacts_from_run(run_dir)}
        else:
            arts = export_all(name, c, work / "artifacts", args.backends.split(","))
        claims = report(name, c, measure(name, c, arts, args))
        failed |= not all(claims.values())
    print(f"\n# load average {os.getloadavg()[0]:.1f} at end (figures taken on a shared host are contended)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
