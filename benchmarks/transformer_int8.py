"""INT8 on a BERT-class attention encoder: every scheme per backend, against the PyTorch original and the FP32 artifact.

The model is examples/tokens' encoder at BERT-block shape -- 4 layers, width 256, 4 heads, FFN 1024, sequence 64,
two int64 inputs (input_ids, attention_mask) -- trained on digits read as token sequences (examples/tokens/data.py,
6 epochs, ~3 min on one core, cached in examples/tokens/.cache). It returns two outputs: the pooled, pre-head
embedding (what an embedding model ships: the cosine below is taken on it, the hard case) and the logits (top-1).

Each artifact is made by the pipeline's own exporter (targets.get_exporter, ExportConfig.int8_scheme), loaded by the
on-device runner's loader (targets/runner/bench.py) and timed interleaved with the others at batch 1 (rotating
order, a busy-wait gap between runtimes, as benchmarks/backends.py does). Printed per artifact: mean cosine of the
embedding to the original over the eval samples (and the worst sample), top-1 and agreement with the original's
top-1, p50/p90 latency (n), INT8 p50 / FP32 p50 of the same backend, and the file size.

    python benchmarks/transformer_int8.py [--backends onnx,openvino,tflite] [--threads 1] [--eval 360]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "tokens"))

from benchmarks.backends import _busy_wait, _versions  # noqa: E402
from benchmarks.host import cpu_model  # noqa: E402
from targets import get_exporter  # noqa: E402
from targets.errors import EdgeError  # noqa: E402
from targets.export_config import ExportConfig  # noqa: E402
from targets.runner import bench  # noqa: E402

SCHEMES = {"onnx": ["static", "dynamic", "auto"], "openvino": ["static", "smoothquant", "auto"],
           "tflite": ["static", "dynamic", "auto"]}
NAMES = ["input_ids", "attention_mask"]


class EmbedderWithHead(nn.Module):
    """The trained encoder with two outputs: the masked mean-pooled embedding (before the classifier) and logits."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.enc
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = e.embed(input_ids) + e.pos(positions)[None]
        keep = attention_mask.to(x.dtype)
        bias = ((1.0 - keep) * -1e4)[:, None, None, :]
        for block in e.blocks:
            x = block(x, bias)
        x = e.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return pooled, e.head(pooled)


def trained_encoder() -> nn.Module:
    from models import CACHE, TokenEncoder, train

    from pipeline.recipe.trained import trained_once

    torch.manual_seed(0)
    enc = TokenEncoder(dim=256, num_heads=4, hidden=1024, depth=4)
    return trained_once(enc, CACHE / "bert-class-256x4-v1.pt", lambda m: train(m, epochs=6, lr=1e-3),
                        "the BERT-class token encoder (benchmarks/transformer_int8.py)")




def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnx,openvino,tflite")
    ap.add_argument("--threads", default="1,2", help="runtime threads, comma-separated: one timing table each")
    ap.add_argument("--eval", type=int, default=360, help="eval samples the cosine and top-1 are taken on")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--gap", type=float, default=0.1)
    ap.add_argument("--calib", type=int, default=128)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    torch.set_num_threads(threads[0])
    from data import splits

    load_before = os.getloadavg()
    print(f"cpu: {cpu_model()} ({platform.machine()}, {os.cpu_count()} cpus); runtime threads={threads} batch=1")
    print("versions:", _versions(), flush=True)
    model = EmbedderWithHead(trained_encoder()).eval()
    data = splits()
    ev, cal = data["eval"], data["calib"]
    n = min(args.eval, len(ev))
    feeds = {"input_ids": ev.ids[:n].numpy(), "attention_mask": ev.mask[:n].numpy()}
    labels = ev.labels[:n].numpy()
    calib = {"input_ids": cal.ids[:args.calib].numpy(), "attention_mask": cal.mask[:args.calib].numpy()}
    example = (ev.ids[:1], ev.mask[:1])
    with torch.no_grad():
        ref_emb, ref_logits = (t.numpy() for t in model(*(torch.from_numpy(feeds[k]) for k in NAMES)))
    print(f"original (PyTorch): top-1 {np.mean(ref_logits.argmax(1) == labels):.3f} on {n} eval samples", flush=True)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tint8-") as tmp:
        arts: dict[str, Any] = {}
        for fam in [b for b in args.backends.split(",") if b]:
            for scheme in ["fp32", *SCHEMES[fam]]:
                prec = "fp32" if scheme == "fp32" else "int8"
                cfg = ExportConfig(precision=prec, name=f"enc-{scheme}", input_names=NAMES,
                                   output_names=["embedding", "logits"], calib_samples=args.calib,
                                   **({"int8_scheme": scheme} if prec == "int8" else {}))
                t0 = time.perf_counter()
                try:
                    art = get_exporter(fam)(model, example, calib, cfg, Path(tmp) / fam / scheme)
                except EdgeError as exc:
                    print(f"  {fam}-{scheme}: not exported ({exc})", flush=True)
                    continue
                resolved = (art.metadata.get("int8") or {}).get("scheme", "fp32")
                tag = f"{fam}-{scheme}" + (f"->{resolved}" if scheme == "auto" else "")
                arts[tag] = art
                print(f"  exported {tag} in {time.perf_counter() - t0:.1f}s", flush=True)
        sessions = {tag: bench.load(str(a.path), a.backend, threads[0], input_names=a.metadata.get("inputs"))
                    for tag, a in arts.items()}
        for tag, sess in sessions.items():
            outs = [sess.run({k: feeds[k][i:i + 1] for k in NAMES}) for i in range(n)]
            emb = np.concatenate([o[0] for o in outs])
            logits = np.concatenate([o[1] for o in outs])
            cos = _cosine(emb, ref_emb)
            rows.append({"tag": tag, "cos": float(cos.mean()), "cos_min": float(cos.min()),
                         "top1": float(np.mean(logits.argmax(1) == labels)),
                         "agree": float(np.mean(logits.argmax(1) == ref_logits.argmax(1))),
                         "bytes": arts[tag].bytes, "family": arts[tag].backend})
        for t in threads:
            if t != threads[0]:
                sessions = {tag: bench.load(str(a.path), a.backend, t, input_names=a.metadata.get("inputs"))
                            for tag, a in arts.items()}
            _table(rows, _timed(sessions, feeds, args), t)
    load_after = os.getloadavg()
    print(f"\nloadavg (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} cpus"
          + (" -- CONTENDED: ratios (interleaved) are fairer than absolute times"
             if max(load_before[0], load_after[0]) > (os.cpu_count() or 1) else ""))
    print("ok = INT8 cosine >= 0.99 to the original and faster than the same backend's FP32 artifact")
    return 0


def _table(rows: list[dict[str, Any]], times: dict[str, list[float]], threads: int) -> None:
    fp32 = {r["family"]: np.median(times[r["tag"]]) for r in rows if r["tag"].endswith("-fp32")}
    hdr = (f"{'artifact':<26}{'cos mean':>9}{'cos min':>9}{'top-1':>7}{'agree':>7}{'p50 ms':>8}{'p90 ms':>8}"
           f"{'n':>5}{'/fp32':>7}{'MB':>7}")
    print(f"\nruntime threads = {threads}; loadavg now {os.getloadavg()[0]:.2f}\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        t = np.asarray(times[r["tag"]])
        p50 = float(np.median(t))
        ratio = p50 / fp32[r["family"]] if r["family"] in fp32 else float("nan")
        ok = "" if r["tag"].endswith("fp32") else ("  ok" if r["cos"] >= 0.99 and ratio < 1 else "  <- misses")
        print(f"{r['tag']:<26}{r['cos']:>9.4f}{r['cos_min']:>9.4f}{r['top1']:>7.3f}{r['agree']:>7.3f}{p50:>8.2f}"
              f"{float(np.percentile(t, 90)):>8.2f}{len(t):>5}{ratio:>7.2f}{r['bytes'] / 1e6:>7.2f}{ok}", flush=True)


def _timed(sessions: dict[str, Any], feeds: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, list[float]]:
    """Latency per artifact at batch 1, interleaved: each round visits every artifact in a rotated order, after a
    busy-wait gap and two untimed calls, so load changes hit all of them alike."""
    names = list(sessions)
    n = len(feeds[NAMES[0]])
    one = [{k: feeds[k][i:i + 1] for k in NAMES} for i in range(n)]
    for name in names:
        for i in range(5):
            sessions[name].run(one[i % n])
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = sessions[name].run
            _busy_wait(args.gap)
            for i in range(2):
                run(one[i % n])
            for i in range(args.iters):
                x = one[(r * args.iters + i) % n]
                t0 = time.perf_counter_ns()
                run(x)
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
    return samples


if __name__ == "__main__":
    sys.exit(main())
