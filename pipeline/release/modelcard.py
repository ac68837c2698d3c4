"""The human-readable parts of a release bundle: MODEL_CARD.md and example.py.

Both are generated from the run's summary only (no clock, no host paths), so the bundle stays byte-identical when it
is rebuilt from the same run folder.
"""

from __future__ import annotations

from typing import Any

from pipeline.results.generation import describe, generation
from pipeline.results.headline import headline
from pipeline.results.rundir import artifact_name, human_bytes, latency, metric_label, metric_value


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _known(value: Any, unit: str = "") -> str:
    return "not reported by the device" if value is None else f"{value}{unit}"


def model_card(summary: dict[str, Any], manifest: dict[str, Any], chosen: list[dict[str, Any]]) -> str:
    recipe, device, version = manifest["name"], manifest["device"], manifest["version"]
    base = summary.get("baseline") or {}
    pick = manifest["pick"]["overall"]
    n_eval = next(((a.get("bench") or {}).get("n_eval") for a in chosen if (a.get("bench") or {}).get("n_eval")), None)
    shipped = next((a for a in chosen if artifact_name(a) == pick), None)
    lines = [
        f"# {recipe} for {device}, version {version}",
        "",
        f"**{headline(summary, shipped)['text']}** (the original: the recipe's model before any stage, as FP32 "
        "ONNX, measured on the same device by the same runner)",
        "",
        f"Release bundle of the `{recipe}` model, optimised and measured on the `{device}` device profile by edgepipe "
        f"{summary.get('edgepipe_version') or ''} (run `{summary['run_id']}`, "
        f"finished {summary.get('finished') or '-'}). The recommended artifact is **{pick}**; `example.py` shows how "
        "to load and call it with the bundled runner "
        "`bench.py` (needs only Python 3, numpy and the artifact's runtime).",
        "",
        f"Inputs: {manifest.get('inputs') or manifest.get('input_shape') or 'as declared by the artifact'} "
        "(batch 1), preprocessed like the training data; outputs: as the recipe's task defines them.",
        "",
        "## Data",
        "",
        f"Every figure is {metric_label(summary)} (the recipe's task metric) on its held-out evaluation split "
        "(`data.eval`"
        + (f", {n_eval} samples" if n_eval else "") + "), measured on the device by the "
        "runner for each artifact and in PyTorch for the original model and each stage.",
        "",
        "## How it was made",
        "",
        f"| step | {metric_label(summary)} | params | MACs |",
        "|---|---:|---:|---:|",
        f"| original model | {_fmt(metric_value(base))} | {base.get('params', '-')} | {base.get('macs', '-')} |",
    ]
    for st in summary.get("stages") or []:
        lines.append(f"| {st.get('name')} | {_fmt(metric_value(st))} | {st.get('params', '-')} | "
                     f"{st.get('macs', '-')} |")
    lines += ["", f"## Artifacts in this bundle (measured on {device})", "",
              f"| artifact | file | size | {metric_label(summary)} | p50 ms | p90 ms | p99 ms | n | runtime | gate |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    for art in chosen:
        name = artifact_name(art)
        entry = by_name[name]
        lat = art.get("latency_ms") or {}
        gate = (entry.get("gate") or {}).get("passed")
        runtime = (art.get("bench") or {}).get("runtime") or (art.get("environment") or {}).get("runtime", "-")
        verdict = "-" if gate is None else ("pass" if gate else "FAIL")
        label = f"{name} (pick)" if name == pick else name
        lines.append(f"| {label} | `{entry['path']}` | {human_bytes(art.get('bytes'))}"
                     f" | {_fmt(metric_value(art))} | {_fmt(latency(art, 'p50'))} | {_fmt(latency(art, 'p90'))} | "
                     f"{_fmt(latency(art, 'p99'))} | {lat.get('n', '-')} | {runtime} | {verdict} |")
    gen_rows = [(artifact_name(a), describe(rec)) for a in chosen if (rec := generation(a)) is not None]
    if gen_rows:
        lines += ["", "### Generation (greedy, batch 1, KV cache; measured on the device by the runner)", "",
                  "| artifact | prompt + new | time to first token p50 / p90 ms | decode tokens/s p50 / p90 | n | "
                  "peak RSS MiB | valid | greedy tokens |", "|---|---|---:|---:|---:|---:|---|---|"]
        lines += [f"| {n} | {c['prompt']} | {c['ttft']} | {c['tps']} | {c['n']} | {c['rss']} | {c['valid']} | "
                  f"{c['greedy']} |" for n, c in gen_rows]
    lines += ["", "Latency is one inference at a time (batch 1) after warm-up; p50/p90/p99 over n timed runs. The "
              "figures hold for this device with the environment below; another board, runtime version, thread "
              "count or temperature gives other numbers.", "", "## Environment", ""]
    for art in chosen:
        bench = art.get("bench") or {}
        env = bench.get("environment") or {}
        state = (bench.get("state") or {}).get("before") or {}
        lines.append(f"- {artifact_name(art)}: {bench.get('runtime', '-')}, threads {bench.get('threads', '-')}, "
                     f"{env.get('machine', '-')} {env.get('os', '-')}, Python {env.get('python', '-')}, "
                     f"CPU governor {_known(state.get('governor'))}, temperature {_known(state.get('temp_c'), ' °C')}")
    tools = summary.get("tool_versions") or {}
    if tools:
        lines.append("- tools on the build host: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())))
    gate = manifest["gate"]
    limits = ", ".join(f"{k} {gate[k]}" for k in ("max_metric_drop", "max_latency_ms", "max_bytes")
                       if gate.get(k) is not None) or "none"
    verdict = "passed" if gate.get("passed") else "FAILED"
    lines += ["", "## Quality gate", "", f"Limits: {limits}. Verdict: **{verdict}**."]
    if not gate.get("passed"):
        lines.append("Released with `--allow-failed-gate`; failures:")
        lines += [f"- {f}" for f in gate.get("failures") or []]
    lines += ["", "## Limits", "",
              "- Inputs must be preprocessed exactly like the training data and have the shape the artifact declares "
              "(batch 1); INT8 artifacts may disagree with the original on inputs far from the calibration data.",
              "- Accuracy was measured on one evaluation split; it is not a guarantee on other data.",
              "- Check integrity with `edgepipe verify` on the .tar.gz, or `sha256sum -c SHA256SUMS` inside it.", ""]
    return "\n".join(lines)


EXAMPLE = '''"""Load the released model with the bundled runner, run it and print what it found.

Needs only Python 3, numpy and the runtime of the artifact ({runtime}). Run from anywhere:
    python3 example.py [inputs.npz | input.npy]
An .npz holds one array per input name (with the batch dimension); an .npy is the single-input shorthand. With
no file, every input gets a placeholder of its declared shape and dtype (random floats, zero integers).
Each output is read as the recipe's task ({metric}) reads it: {what}.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the on-device runner shipped next to this file

MODEL = HERE / {path!r}
BACKEND = {backend!r}
TASK = {task!r}               # "classification", "detection" or "other"
BATCH_AXES = {batch_axes!r}   # per output: the axis that indexes samples (0 when not listed)
TOP_K = 5


def placeholder(spec: dict) -> np.ndarray:
    shape = (1, *spec["shape"][1:])
    if np.issubdtype(spec["dtype"], np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(spec["dtype"])
    return np.zeros(shape, dtype=spec["dtype"])


def one_sample(outputs: list) -> list:
    """Each output of a batch-1 call without its batch axis."""
    return [np.take(o, 0, axis=BATCH_AXES[j] if j < len(BATCH_AXES) else 0) for j, o in enumerate(outputs)]


def classification(outs: list) -> str:
    logits = np.asarray(outs[0], dtype=np.float64).reshape(-1)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:TOP_K]
    return f"top-{{len(top)}} " + ", ".join(f"class {{int(c)}} ({{probs[c]:.3f}})" for c in top)


def detection(outs: list) -> str:
    """Boxes and scores from the raw outputs: (K, 6) rows x1 y1 x2 y2 score class; or a (K, 4) boxes output beside a
    (K,) or (K, C) scores output; or one packed (K, 4 + C) head (box values as the model emits them, before the
    recipe's decoding, and class logits)."""
    arrays = [np.atleast_2d(np.asarray(o, dtype=np.float64)) for o in outs]   # one box per image: (4,) -> (1, 4)
    rows = next((a for a in arrays if a.ndim == 2 and a.shape[1] == 6), None)
    boxes = next((a for a in arrays if a.ndim == 2 and a.shape[1] == 4), None)
    kind = "boxes"
    if rows is not None:
        boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5]
    elif boxes is not None:
        rest = [a for a in arrays if a is not boxes and a.shape[:1] == boxes.shape[:1]]
        if not rest:
            return "a boxes output but no scores beside it"
        s = rest[0].reshape(len(boxes), -1)
        scores, classes = s.max(1), s.argmax(1)
    else:
        head = next((a for a in arrays if a.ndim == 2 and a.shape[1] > 4), None)
        if head is None:
            return "no box output (shapes %s)" % [list(a.shape) for a in arrays]
        s = head[:, 4:]
        s = s if 0.0 <= s.min() and s.max() <= 1.0 else 1.0 / (1.0 + np.exp(-s))
        boxes, scores, classes, kind = head[:, :4], s.max(1), s.argmax(1), "raw box values"
    top = np.argsort(-scores, kind="stable")[:TOP_K]
    return f"{{len(scores)}} candidates, best {{len(top)}} {{kind}} (x1 y1 x2 y2 score class): " + "; ".join(
        " ".join(f"{{v:.1f}}" for v in boxes[i]) + f" {{scores[i]:.3f}} {{int(classes[i])}}" for i in top)


def other(outs: list) -> str:
    return "; ".join(f"output {{j}}: shape {{list(np.shape(o))}}, first values "
                     f"{{np.round(np.asarray(o, dtype=np.float64).reshape(-1)[:4], 4).tolist()}}"
                     for j, o in enumerate(outs))


def main() -> None:
    session = bench.load(str(MODEL), BACKEND, threads=1)
    if len(sys.argv) > 1 and sys.argv[1].endswith(".npz"):
        with np.load(sys.argv[1]) as f:
            feeds = {{i["name"]: f[i["name"]] for i in session.inputs}}
    elif len(sys.argv) > 1:
        first = session.inputs[0]
        feeds = {{first["name"]: np.load(sys.argv[1]).reshape(-1, *first["shape"][1:])}}
    else:
        feeds = {{i["name"]: placeholder(i) for i in session.inputs}}
    show = {{"classification": classification, "detection": detection}}.get(TASK, other)
    for i in range(len(next(iter(feeds.values())))):
        outs = one_sample(session.run({{k: v[i:i + 1] for k, v in feeds.items()}}))
        print(f"input {{i}}: {{show(outs)}} with {{session.runtime}} {{session.version}}")


if __name__ == "__main__":
    main()
'''

TASKS = {"top1": "classification", "top5": "classification", "map50": "detection", "map50_95": "detection"}
WHAT = {"classification": "the top-5 classes of the first output with their softmax probabilities",
        "detection": "the highest-scoring boxes with score and class",
        "other": "each output's shape and first values"}


def example_py(path: str, backend: str, runtime: str, metric: str | None = None,
               batch_axes: list[int] | None = None) -> str:
    """example.py of a bundle: loads the pick with the bundled runner and prints what the task reads from it (top-k
    classes for a classifier, boxes for a detector, shapes and first values otherwise), so the first thing a user
    runs shows the model at work, not an ``argmax`` over a box tensor."""
    task = TASKS.get(metric or "", "other")
    return EXAMPLE.format(path=path, backend=backend, runtime=runtime, metric=metric or "unknown",
                          what=WHAT[task], task=task, batch_axes=list(batch_axes or []))
