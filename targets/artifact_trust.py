"""What ``edgepipe bench FILE`` may believe about a file someone handed it.

The sidecar ``FILE.json`` comes with the file, so it is untrusted: its ``path`` never replaces the file measured, its
``files`` never name anything but the artifact's own companions next to it (OpenVINO's ``.bin``, ONNX external data),
and its ``sha256`` must be the measured file's. Companions are derived from the model itself where the format says
(OpenVINO: same stem ``.bin``; ONNX: the external-data locations in the graph), so nothing else ever travels.
Every one of them must be a regular, single-link file really inside the model's folder (``targets.safe_files``: a
symlinked ``.bin`` would send whatever it points to), and where the sidecar recorded a file's sha256
(``file_sha256``) the file must still have it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from targets import backend_for_file
from targets.artifact import Artifact
from targets.errors import ConfigError
from targets.safe_files import UnsafeFileError, sha256_regular, size_regular


def _companions(main: Path, family: str) -> list[Path]:
    if family == "openvino":
        xml_bin = main.with_suffix(".bin")
        if not xml_bin.is_file() and not xml_bin.is_symlink():
            raise ConfigError(f"{main}: the OpenVINO weights {xml_bin.name} are not next to the .xml",
                              hint="an OpenVINO IR is two files: keep the .xml and its .bin in one folder")
        return [xml_bin]
    if family == "onnx":
        return _onnx_external_data(main)
    return []


def _onnx_external_data(main: Path) -> list[Path]:
    """The files an ONNX model's initializers live in; each must be a plain name in the model's own folder."""
    try:
        import onnx
    except ImportError:  # the runtime would say it lacks onnx; nothing more can be shipped without knowing
        return []
    try:
        proto = onnx.load(str(main), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable here: the runtime on the device says why, in its own words
        return []
    found: list[Path] = []
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or Path(location).name != location or location in (".", ".."):
            raise ConfigError(f"{main}: initializer {tensor.name} keeps its data at {location!r}, outside the "
                              "model's folder", hint="save external data next to the model with a plain file name")
        data = main.parent / location
        if not data.is_file() and not data.is_symlink():
            raise ConfigError(f"{main}: external data file {location} (initializer {tensor.name}) is missing",
                              hint="copy it next to the .onnx file, or save the model with its data inside")
        if data not in found:
            found.append(data)
    return found


def _read_sidecar(side: Path) -> dict[str, Any]:
    try:
        record = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{side}: not a readable artifact record ({type(exc).__name__}: {str(exc)[:120]})",
                          hint="delete it to benchmark the model file alone, or re-export the model") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{side}: an artifact record must be a JSON object",
                          hint="delete it to benchmark the model file alone")
    return record


def artifact_for_bench(path: str | Path) -> Artifact:
    """An Artifact for ``path`` whose files are ``path`` and its own companions, checked against its sidecar."""
    main = Path(path)
    if main.suffix == ".json":
        main = main.with_suffix("")
    if not main.is_file() and not main.is_symlink():
        raise ConfigError(f"{main}: artifact not found", hint="give the path of a .onnx, .xml or .tflite file")
    family = backend_for_file(main)
    side = Path(str(main) + ".json")
    record = _read_sidecar(side) if side.is_file() else {}
    root = main.parent
    actual = sha256_regular(main, root)
    claimed = record.get("sha256")
    if claimed is not None and claimed != actual:
        raise ConfigError(f"{side}: sha256 {str(claimed)[:16]}... does not match {main.name} ({actual[:16]}...)",
                          hint="the record belongs to another file; re-export, or delete the .json to measure the "
                               "file alone")
    backend = record.get("backend") if record.get("backend") == family else family
    precision = record.get("precision") if isinstance(record.get("precision"), str) else "unknown"
    files = [main, *_companions(main, family)]
    hashes = {main.name: actual}
    recorded = record.get("file_sha256") if isinstance(record.get("file_sha256"), dict) else {}
    for f in files[1:]:
        hashes[f.name] = sha256_regular(f, root)
        want = recorded.get(f.name)
        if want is not None and want != hashes[f.name]:
            raise UnsafeFileError(f"{f}: sha256 {hashes[f.name][:16]}... differs from {str(want)[:16]}... in {side}; "
                                  "it changed after the export", hint="re-export the model instead of editing its "
                                  "files, or delete the .json to measure the files as they are")
    return Artifact(path=str(main), backend=backend, precision=precision, sha256=actual,
                    bytes=sum(size_regular(f, root) for f in files), parent=None, produced_by="edgepipe bench",
                    files=[str(f) for f in files], file_sha256=hashes)
