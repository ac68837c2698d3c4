"""The human-readable parts of a release bundle: MODEL_CARD.md and example.py.

Both are generated from the run's summary only (no clock, no host paths), so the bundle stays byte-identical when it
is rebuilt from the same run folder.
"""

from __future__ import annotations

from typing import Any

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


EXAMPLE = '''"""Load the released model with the bundled runner and run it on one input.

Needs only Python 3, numpy and the runtime of the artifact ({runtime}). Run from anywhere:
    python3 example.py [inputs.npz | input.npy]
An .npz holds one array per input name (with the batch dimension); an .npy is the single-input shorthand. With
no file, every input gets a placeholder of its declared shape and dtype (random floats, zero integers).
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the on-device runner shipped next to this file

MODEL = HERE / {path!r}
BACKEND = {backend!r}


def placeholder(spec: dict) -> np.ndarray:
    shape = (1, *spec["shape"][1:])
    if np.issubdtype(spec["dtype"], np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(spec["dtype"])
    return np.zeros(shape, dtype=spec["dtype"])


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
    outputs = bench.predict(session, feeds)
    for i in range(len(outputs[0])):
        parts = [f"output {{k}}: shape {{list(out.shape[1:])}}, argmax {{int(out[i].argmax())}} "
                 f"(max {{float(out[i].max()):.3f}})" for k, out in enumerate(outputs)]
        print(f"input {{i}}: " + "; ".join(parts) + f" with {{session.runtime}} {{session.version}}")


if __name__ == "__main__":
    main()
'''


def example_py(path: str, backend: str, runtime: str) -> str:
    return EXAMPLE.format(path=path, backend=backend, runtime=runtime)
