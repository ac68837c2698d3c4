"""The INT8 guard: a reduced-precision artifact that is slower or bigger than its FP32 parent on the same device.

INT8 (or fp16) exists to be faster or smaller; when it is neither, shipping it is a loss the user never asked for
(the field's most common complaint after accuracy: onnxruntime #20052, XNNPACK #999, openvino_notebooks #837). So
after benchmarking, each int8/fp16 record is compared with the same family's fp32 record measured on the same device
(p50, and bytes on disk); a slower or bigger one is flagged in summary.json (``int8_guard``), the console table and
the report, with the ops its runtime left in float (targets/op_report.py) as the first answer to "why". The release
never picks a flagged-slower artifact over its faster FP32 parent of equal or better metric (rundir.outranked).

"Slower" means slower beyond the measured spread (targets/noise.py: the p50 confidence intervals do not overlap);
a difference inside the noise is ``no_faster`` -- a plain note, not a warning, and no reason to prefer the parent.
"""

from __future__ import annotations

from typing import Any

from pipeline.results.rundir import latency
from targets.artifact import Artifact
from targets.noise import clearly_faster, clearly_slower, record_interval


def _ops(art: Artifact | None) -> dict[str, Any] | None:
    if art is None:
        return None
    try:
        from targets.op_report import float_ops

        return float_ops(art.path, art.backend)
    except Exception as exc:  # noqa: BLE001 - a missing runtime on the host must not cost the run its figures
        return {"error": f"could not list the ops: {type(exc).__name__}: {exc}"}


def judge(rec: dict[str, Any], parent: dict[str, Any], device: str = "the device",
          art: Artifact | None = None) -> dict[str, Any]:
    """The guard's verdict on one int8/fp16 record against its measured FP32 parent: p50 latency and bytes on disk.
    The one rule: ``edgepipe run`` applies it per family, ``edgepipe search`` per candidate and its float sibling.

    ``slower``: the p50 intervals do not overlap and this one is above (a warning, and the release prefers the
    parent); ``no_faster``: they overlap, so the measurement cannot tell them apart (a note)."""
    p50, parent_p50 = latency(rec, "p50"), latency(parent, "p50")
    guard: dict[str, Any] = {"parent": f"{parent['backend']}-{parent['precision']}"}
    if p50 is not None and parent_p50:
        mine, theirs = record_interval(rec), record_interval(parent)
        guard["latency_ratio"] = round(p50 / parent_p50, 3)
        guard["p50_interval_ms"], guard["parent_p50_interval_ms"] = list(mine or ()), list(theirs or ())
        guard["slower"] = clearly_slower(mine, theirs)
        guard["no_faster"] = not guard["slower"] and not clearly_faster(mine, theirs)
        if guard["no_faster"]:
            guard["note"] = (f"{rec['backend']}-{rec['precision']} is no faster than {guard['parent']} on {device} "
                             f"(p50 {p50:.4g} vs {parent_p50:.4g} ms, {guard['latency_ratio']:.2f}x: inside the "
                             "measured spread)")
    if isinstance(rec.get("bytes"), int) and isinstance(parent.get("bytes"), int) and parent["bytes"]:
        guard["size_ratio"] = round(rec["bytes"] / parent["bytes"], 3)
        guard["bigger"] = rec["bytes"] > parent["bytes"]
    guard["flagged"] = bool(guard.get("slower") or guard.get("bigger"))
    if guard["flagged"]:
        what = []
        if guard.get("slower"):
            what.append(f"SLOWER than {guard['parent']} on {device} (p50 {p50:.4g} vs {parent_p50:.4g} ms, "
                        f"{guard['latency_ratio']:.2f}x, beyond the measured spread)")
        if guard.get("bigger"):
            what.append(f"BIGGER than {guard['parent']} ({rec['bytes']} vs {parent['bytes']} bytes, "
                        f"{guard['size_ratio']:.2f}x)")
        ops = _ops(art)
        if ops is not None:
            guard["ops"] = ops
        why = f"; ops left in float: {ops['text']}" if ops and "text" in ops else ""
        guard["message"] = (f"{rec['backend']}-{rec['precision']} is " + " and ".join(what) + why
                            + f"; prefer {guard['parent']} here, or keep the float ops' layers in float")
    return guard


def guards(rec: dict[str, Any]) -> bool:
    """Whether the guard applies to a record: a reduced precision that exists to be faster or smaller."""
    return rec.get("precision") in ("int8", "int4", "fp16")


def guard_records(records: list[dict[str, Any]], artifacts: dict[str, Artifact] | None = None,
                  device: str = "the device") -> list[str]:
    """Add ``int8_guard`` to every int8/fp16 record with a measured FP32 sibling; return one warning per flag."""
    by_name = {f"{r['backend']}-{r['precision']}": r for r in records}
    warnings = []
    for r in records:
        if not guards(r):
            continue
        parent = by_name.get(f"{r['backend']}-fp32")
        if parent is None:
            continue
        r["int8_guard"] = judge(r, parent, device, (artifacts or {}).get(f"{r['backend']}-{r['precision']}"))
        if r["int8_guard"]["flagged"]:
            warnings.append(r["int8_guard"]["message"])
    return warnings
