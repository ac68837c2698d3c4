"""Before minutes of stages and exports: can each device be reached, and does it have the runtimes it will need?

A run aimed at a board that is off, unknown to known_hosts, or lacks onnxruntime would otherwise train, prune,
quantize and export everything and only then fail. This runs the part of ``doctor`` that decides whether a
benchmark can happen at all -- connection, host key, python + numpy, one runtime per backend family -- and raises
a DeviceError (exit 4) in seconds. Governor, temperature and providers are not preconditions: they make a figure
invalid, with the reason, later.
"""

from __future__ import annotations

import importlib.util

from targets.doctor import RUNTIME_OF, probe
from targets.errors import DeviceError
from targets.profiles import DeviceProfile
from targets.transport import open_transport

_LOCAL_MODULES = {"onnx": ["onnxruntime"], "openvino": ["openvino"],
                  "tflite": ["ai_edge_litert", "tflite_runtime", "tensorflow"]}


def preflight(profile: DeviceProfile, backends: list[str]) -> None:
    """Raise DeviceError naming the device and what is missing; return when a benchmark can run there."""
    families = sorted({b.split("-")[0] for b in backends})
    if profile.is_local:
        missing = [f for f in families if not any(importlib.util.find_spec(m) for m in _LOCAL_MODULES[f])]
        if missing:
            raise DeviceError(f"{profile.name}: no runtime for {', '.join(missing)} on this host",
                              hint="install the extra (pip install 'edgepipe[openvino]' / '[tflite]') or drop "
                                   "those backends")
        return
    tr = open_transport(profile)
    try:
        info = probe(profile, tr)  # connects (host key checked), uploads the runner, runs `bench.py --probe`
    finally:
        tr.close()
    if "error" in info:
        raise DeviceError(f"{profile.name}: the device cannot run the benchmark: {info['error']}",
                          hint=f"install Python 3 and numpy there; `edgepipe doctor {profile.name}` shows more")
    have = info.get("runtimes") or {}
    missing = [f"{RUNTIME_OF[f]} (for {f}-*)" for f in families if not have.get(RUNTIME_OF[f])]
    if missing:
        raise DeviceError(f"{profile.name}: missing on the device: {', '.join(missing)}",
                          hint=f"install them for {profile.python} there, or choose other backends; "
                               f"`edgepipe doctor {profile.name}` shows more")
