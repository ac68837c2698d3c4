"""Weight-only INT8/INT4 on a small language model: file size vs FP32, held-out perplexity, and forward latency.

Two models, kept apart in the output because they answer different questions:

- ``small`` (4 layers, width 256, vocab 4096, ~4.3M parameters) is *trained* here for ``--train-seconds`` on one
  thread on real text -- the docstrings of installed packages (numpy, torch, the standard library) -- tokenized by a
  ``tokenizers`` byte-level BPE trained here on the training split. Perplexity and size figures come from it.
- ``large`` (8 layers, width 512, vocab 4096, ~27M parameters) is random-init and only *timed*: decode speed-up from
  4-bit weights shows only when the weights are too big for the caches (memory-bound); a 4M model fits in L2/L3.
  Its perplexity is meaningless and is not printed.

Latency is a PROXY for decoding: one plain-graph forward at batch 1 over T tokens (T=1 is a decode-sized call without
a KV cache, T=16 a short prefill), each artifact exported at that static length. Real generation timing (KV cache,
TTFT, tokens/s) is wt-kvgen's runner mode. Every artifact is made by the pipeline's own exporters
(``targets/export_*.py`` with ``task: lm``: int8 = weight-only) and run by the on-device runner's loaders
(``targets/runner/bench.py``), 1 thread, interleaved rounds, p50. Variants beside the defaults: ``acc0`` = ORT
MatMulNBits with ``accuracy_level`` 0 (float compute in the kernel; the default is 4), ``awq`` = NNCF data-aware
AWQ + scale estimation over 16 calibration windows.

    python benchmarks/lm_weight_only.py [--train-seconds 240] [--iters 20] [--skip-large]
                                        [--backends onnx,openvino,tflite]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_model
from targets import get_exporter
from targets.export_config import ExportConfig
from targets.runner import bench

VOCAB, CTX = 4096, 64


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for y in self.qkv(self.n1(x)).split(d, dim=-1))
        mask = torch.triu(torch.full((t, t), -1e4), 1)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads) + mask, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class GPT(nn.Module):
    """Pre-norm GPT: token + learned positions, tied embedding head (forward(input_ids) -> logits)."""

    def __init__(self, layers: int, width: int, heads: int) -> None:
        super().__init__()
        self.max_positions = CTX
        self.emb, self.pos = nn.Embedding(VOCAB, width), nn.Embedding(CTX, width)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x) @ self.emb.weight.t()


def corpus() -> list[str]:
    """Docstrings of installed packages, one per public object (deterministic order)."""
    docs: list[str] = []
    for name in ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "torch", "torch.nn",
                 "torch.nn.functional", "torch.linalg", "torch.optim", "collections", "itertools", "functools",
                 "os", "re", "json", "pathlib", "argparse", "inspect", "typing", "string", "textwrap", "logging",
                 "subprocess", "threading", "asyncio", "email", "http.client", "urllib.parse", "unittest"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            try:
                doc = inspect.getdoc(getattr(mod, attr))
            except Exception:  # noqa: BLE001 - odd objects raise on attribute access
                continue
            if doc and len(doc) > 80:
                docs.append(doc)
    return list(dict.fromkeys(docs))


def tokenize(docs: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    from tokenizers import ByteLevelBPETokenizer

    rng = np.random.default_rng(0)
    order = rng.permutation(len(docs))
    cut = int(len(docs) * 0.9)
    train_docs, held_docs = [docs[i] for i in order[:cut]], [docs[i] for i in order[cut:]]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(train_docs, vocab_size=VOCAB, min_frequency=2, show_progress=False,
                            special_tokens=["<|doc|>"])
    sep = tok.token_to_id("<|doc|>")

    def ids(ds: list[str]) -> np.ndarray:
        out: list[int] = []
        for enc in tok.encode_batch(ds):
            out += enc.ids + [sep]
        return np.asarray(out, dtype=np.int64)

    return ids(train_docs), ids(held_docs), tok.get_vocab_size()


def train(model: GPT, data: np.ndarray, seconds: float, batch: int = 16) -> tuple[int, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95))
    rng = np.random.default_rng(1)
    t0, step, loss = time.perf_counter(), 0, float("nan")
    model.train()
    while time.perf_counter() - t0 < seconds:
        frac = (time.perf_counter() - t0) / seconds
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        starts = rng.integers(0, len(data) - CTX - 1, batch)
        xy = torch.from_numpy(np.stack([data[s:s + CTX + 1] for s in starts]))
        out = model(xy[:, :-1])
        loss_t = F.cross_entropy(out.reshape(-1, VOCAB), xy[:, 1:].reshape(-1))
        opt.zero_grad()
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss, step = float(loss_t.detach()), step + 1
    model.eval()
    return step, loss


def perplexity(logits: np.ndarray, windows: np.ndarray) -> float:
    lg = torch.from_numpy(np.asarray(logits, dtype=np.float32)).reshape(-1, VOCAB)
    return float(torch.exp(F.cross_entropy(lg, torch.from_numpy(windows[:, 1:]).reshape(-1))))


VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnx-fp32": ("onnx", "fp32", {}), "onnx-int8": ("onnx", "int8", {}),
    "onnx-int8 acc0": ("onnx", "int8", {"wo_accuracy_level": 0}), "onnx-int4": ("onnx", "int4", {}),
    "onnx-int4 acc0": ("onnx", "int4", {"wo_accuracy_level": 0}),
    "openvino-fp32": ("openvino", "fp32", {}), "openvino-int8": ("openvino", "int8", {}),
    "openvino-int4": ("openvino", "int4", {}), "openvino-int4 awq": ("openvino", "int4", {"wo_data_aware": True}),
    "tflite-fp32": ("tflite", "fp32", {}), "tflite-int8": ("tflite", "int8", {}),
}


def export_all(model: GPT, t: int, calib: np.ndarray, out: Path, families: list[str],
               skip: tuple[str, ...] = ()) -> dict[str, Any]:
    arts = {}
    for name, (fam, prec, over) in VARIANTS.items():
        if fam not in families or name in skip:
            continue
        cfg = ExportConfig(name=f"{name.replace(' ', '_')}.t{t}", precision=prec, task="lm",
                           input_names=["input_ids"], output_names=["logits"], calib_samples=16, **over)
        t0 = time.perf_counter()
        arts[name] = get_exporter(fam)(model, (torch.from_numpy(calib[:1, :t]),), calib[:16, :t], cfg, out)
        print(f"  exported {name:18s} T={t:<3d} {time.perf_counter() - t0:5.1f} s", flush=True)
    return arts


def size(art: Any) -> int:
    path = Path(art.path)
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def timed(arts: dict[str, Any], t: int, iters: int, rounds: int = 3) -> dict[str, float]:
    """p50 ms of one forward per artifact, interleaved in ``rounds`` so load drifts hit every artifact alike."""
    sessions = {k: bench.load(str(a.path), a.backend, 1, input_names=["input_ids"]) for k, a in arts.items()}
    feed = {"input_ids": np.random.default_rng(2).integers(0, VOCAB, (1, t)).astype(np.int64)}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(feed)
                samples[k].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in samples.items()}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-seconds", type=float, default=240)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--windows", type=int, default=64, help="held-out windows of 64 tokens for perplexity")
    ap.add_argument("--backends", default="onnx,openvino,tflite")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    families = args.backends.split(",")
    print(f"cpu: {cpu_model()}; load {os.getloadavg()}; torch {torch.__version__}; 1 thread", flush=True)
    t0 = time.perf_counter()
    docs = corpus()
    train_ids, held_ids, vocab = tokenize(docs)
    print(f"corpus: {len(docs)} docstrings, {len(train_ids)} train / {len(held_ids)} held-out tokens, BPE vocab "
          f"{vocab} ({time.perf_counter() - t0:.1f} s)", flush=True)
    torch.manual_seed(0)
    small = GPT(4, 256, 4)
    n_small = sum(p.numel() for p in small.parameters())
    steps, loss = train(small, train_ids, args.train_seconds)
    rng = np.random.default_rng(3)
    starts = rng.choice(len(held_ids) - CTX - 1, args.windows, replace=False)
    held = np.stack([held_ids[s:s + CTX + 1] for s in starts])
    calib = np.stack([train_ids[s:s + CTX] for s in rng.integers(0, len(train_ids) - CTX, 32)])
    with torch.no_grad():
        ref = np.concatenate([small(torch.from_numpy(held[i:i + 1, :-1])).numpy() for i in range(len(held))])
    ppl_torch = perplexity(ref, held)
    print(f"small: {n_small / 1e6:.2f}M params, {steps} steps x 16 x {CTX} tokens in {args.train_seconds:.0f} s, "
          f"last train loss {loss:.3f}, held-out perplexity (torch fp32) {ppl_torch:.2f} (uniform = {VOCAB})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="lm-wo-") as tmp:
        out = Path(tmp)
        arts = export_all(small, CTX, calib, out, families)
        rows = {}
        for name, art in arts.items():
            session = bench.load(str(art.path), art.backend, 1, input_names=["input_ids"])
            logits = bench.predict(session, {"input_ids": held[:, :-1]})[0]
            rows[name] = {"bytes": size(art), "ppl": perplexity(logits, held),
                          "kept_8bit": len((art.metadata.get("weight_only") or {}).get("kept_8bit", [])),
                          "kept_float": (art.metadata.get("weight_only") or {}).get("kept_float", [])}
        lat_small = {t: timed(export_all(small, t, calib, out / f"s{t}", families), t, args.iters) for t in (1, 16)}
        print(f"\n== small (trained, {n_small / 1e6:.2f}M params): size, held-out perplexity ({args.windows} x "
              f"{CTX - 1} next tokens), forward p50 at batch 1 (PROXY for decode; no KV cache)")
        print(f"{'artifact':20s} {'MB':>7s} {'x fp32':>7s} {'ppl':>8s} {'d ppl':>7s} {'T=1 ms':>8s} {'x fp32':>7s} "
              f"{'T=16 ms':>8s} {'x fp32':>7s}  kept float / 8-bit")
        for name, r in rows.items():
            fam = VARIANTS[name][0]
            base = rows[f"{fam}-fp32"]
            cells = [f"{name:20s} {r['bytes'] / 1e6:7.2f} {r['bytes'] / base['bytes']:7.3f} {r['ppl']:8.2f} "
                     f"{(r['ppl'] / ppl_torch - 1) * 100:+6.2f}%"]
            for t in (1, 16):
                ms = lat_small[t].get(name)
                cells.append(f"{ms:8.3f} {lat_small[t][f'{fam}-fp32'] / ms:6.2f}x" if ms else f"{'-':>8s} {'-':>7s}")
            print(" ".join(cells) + f"  {r['kept_float']} / {r['kept_8bit']} layers at 8 bit")
        if not args.skip_large:
            torch.manual_seed(1)
            large = GPT(8, 512, 8)
            n_large = sum(p.numel() for p in large.parameters())
            print(f"\n== large (RANDOM init, timing and size only: {n_large / 1e6:.1f}M params)", flush=True)
            lat = {}
            sizes = {}
            for t in (1, 16):
                la = export_all(large, t, calib, out / f"l{t}", families, skip=("openvino-int4 awq",))
                lat[t] = timed(la, t, args.iters)
                sizes = {k: size(a) for k, a in la.items()}
            print(f"{'artifact':20s} {'MB':>7s} {'x fp32':>7s} {'T=1 ms':>8s} {'speed-up':>8s} {'T=16 ms':>8s} "
                  f"{'speed-up':>8s}")
            for name, b in sizes.items():
                fam = VARIANTS[name][0]
                print(f"{name:20s} {b / 1e6:7.2f} {b / sizes[f'{fam}-fp32']:7.3f} "
                      + " ".join(f"{lat[t][name]:8.3f} {lat[t][f'{fam}-fp32'] / lat[t][name]:7.2f}x" for t in (1, 16)))
    print(f"\nload at end {os.getloadavg()}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
