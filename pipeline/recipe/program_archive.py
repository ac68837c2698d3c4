"""A ``model.program`` (.pt2) is untrusted input: check the archive before torch ever reads it.

``torch.export.load`` unpickles with ``weights_only=False`` whatever the archive asks it to: weights or constants
marked ``use_pickle``, custom (torchbind) and opaque objects, sample inputs that fail the safe loader, and the
legacy pre-2.7 layout. It also picks up AOTInductor shared libraries. So before loading, every member of the zip is
read from its index and its configs: anything that would be unpickled or executed is refused, and the sample inputs
are loaded here with ``torch.load(weights_only=True)`` (the safe unpickler) so torch's own fallback never triggers.
What is not checked: whether the graph is a sensible model (that is what `edgepipe check` runs an input through).
"""

from __future__ import annotations

import io
import json
import pickle
import types
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from targets.errors import ConfigError

MAX_PROGRAM_BYTES = 8 << 30  # uncompressed: a zip bomb must not fill memory or disk while torch reads it
HINT = "save it with torch.export.save(torch.export.export(model, args), path) from plain tensors and modules"
_TENSOR_PREFIXES = ("weight_", "tensor_", "constant_")


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: model.program: refused to load: {why}; edgepipe never runs code from a program "
                       "file", hint=HINT)


def _payload_config(z: zipfile.ZipFile, name: str, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(z.read(name)).get("config")
    except (ValueError, AttributeError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"{name} is not a readable payload config ({exc})") from None
    if not isinstance(config, dict):
        raise _refuse(path, f"{name} holds no config mapping")
    return config


def check_model_file(path: str | Path, where: str) -> None:
    """Say what a file is when it is plainly not a model: empty, or a Git LFS pointer (the weights were never
    fetched) -- rather than "pickled Python objects" or a traceback."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ConfigError(f"{path}: {where}: cannot read it ({exc.strerror})") from None
    if not head:
        raise ConfigError(f"{path}: {where}: the file is empty", hint="save the model again; a copy may have failed")
    if head.startswith(b"version https://git-lfs"):
        raise ConfigError(f"{path}: {where}: this is a Git LFS pointer, not the model",
                          hint="fetch the real file with `git lfs pull` (or download it), then run again")


def check_program_archive(path: str | Path, data: bytes | None = None) -> None:
    """Raise a ConfigError naming the member when loading ``path`` (or its bytes ``data``, already read) could run
    pickled code; return when safe."""
    path = Path(path)
    if data is None:
        check_model_file(path, "model.program")
    try:
        z = zipfile.ZipFile(io.BytesIO(data) if data is not None else path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{path}: model.program: not a torch.export program (not a .pt2 zip archive: {exc})",
                          hint=HINT) from None
    with z:
        infos = z.infolist()
        if sum(i.file_size for i in infos) > MAX_PROGRAM_BYTES:
            raise _refuse(path, f"it unpacks to more than {MAX_PROGRAM_BYTES >> 30} GiB")
        rel: dict[str, str] = {}
        for info in infos:
            parts = PurePosixPath(info.filename).parts
            rel[info.filename] = "/".join(parts[1:]) if len(parts) > 1 else info.filename
        names = set(rel.values())
        if "archive_version" not in names or not any(n.startswith("models/") for n in names):
            raise ConfigError(f"{path}: model.program: not a torch.export program (no archive_version or models/; "
                              "the pre-2.7 layout is unpickled and therefore refused)", hint=HINT)
        for full, name in rel.items():
            if name.startswith("data/aotinductor/") or name.endswith((".so", ".dll", ".dylib")):
                raise _refuse(path, f"{full}: AOTInductor native code (data/aotinductor) would be loaded")
            if name.startswith("data/constants/") and name.endswith(".pt"):
                raise _refuse(path, f"{full}: legacy pickled constants")
            if name.endswith("_weights_config.json") or name.endswith("_constants_config.json"):
                for fqn, meta in _payload_config(z, full, path).items():
                    meta = meta if isinstance(meta, dict) else {}
                    pname = str(meta.get("path_name", ""))
                    if meta.get("use_pickle"):
                        raise _refuse(path, f"{full}: {fqn} is marked use_pickle (pickled Python objects)")
                    if not pname.startswith(_TENSOR_PREFIXES):
                        raise _refuse(path, f"{full}: {fqn} is a custom or opaque object ({pname}), which torch "
                                            "unpickles")
            if name.startswith("data/sample_inputs/"):
                _check_sample_inputs(path, full, z.read(full))


def _check_sample_inputs(path: Path, member: str, data: bytes) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refuse(path, f"{member} holds pickled Python objects, not only tensors "
                            f"({str(exc).splitlines()[0][:120]})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the safe loader means torch would fall back to pickle
        raise _refuse(path, f"{member} is not loadable as plain tensors ({type(exc).__name__})") from None



def load_program(path: str | Path) -> Any:
    """Check the archive, then load it; its module's ``.eval()``/``.train()`` then work like any nn.Module's.

    ``ExportedProgram.module()`` refuses ``eval()``; an exported graph has no train/eval behaviour to switch (it
    was traced in the mode it was exported in), so the two only record the flag.
    """
    import torch
    from torch import nn

    path = Path(path)
    check_model_file(path, "model.program")
    try:
        if path.stat().st_size > MAX_PROGRAM_BYTES:
            raise _refuse(path, f"it is larger than {MAX_PROGRAM_BYTES >> 30} GiB")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: model.program: cannot read it ({exc.strerror})") from None
    # torch.export.load unpickles with weights_only=False: it gets exactly the bytes that were checked (read once),
    # so a file swapped between the check and the load cannot slip through
    check_program_archive(path, data)
    try:
        program = torch.export.load(io.BytesIO(data))
        graph = program.module()
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive is a bad input file
        raise ConfigError(f"{path}: model.program: not a torch.export program: {str(exc).splitlines()[0]}",
                          hint=HINT) from None
    batch = static_batch(program)

    def _mode(self: nn.Module, mode: bool = True) -> nn.Module:
        for m in self.modules():
            m.training = mode
        return self

    graph.train = types.MethodType(_mode, graph)  # type: ignore[method-assign]
    graph.eval = types.MethodType(lambda self: _mode(self, False), graph)  # type: ignore[method-assign]
    return graph if batch is None else any_batch(graph, batch)


def static_batch(program: Any) -> int | None:
    """The batch size a program was exported with when its batch dimension is static (``torch.export.export(m,
    (torch.randn(1, ...),))`` without ``dynamic_shapes``, as most people save one), else None. Such a graph
    refuses any other batch, and the host evaluates in batches of 256."""
    sizes = set()
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in program.graph_signature.user_inputs:
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if not shape:
            continue
        if not isinstance(shape[0], int):   # a SymInt: the batch is dynamic
            return None
        sizes.add(int(shape[0]))
    return sizes.pop() if len(sizes) == 1 else None


def any_batch(graph: Any, batch: int) -> Any:
    """Wrap a fixed-batch program so it takes any batch: inputs are cut into chunks of its batch size and the
    outputs concatenated. ``check`` ran one sample and passed; without this, ``run`` crashed on its first batch."""
    import torch
    from torch import nn

    class StaticBatch(nn.Module):   # built here: this module does not import torch at import time
        def __init__(self) -> None:
            super().__init__()
            self.program = graph   # not `graph`: an exported GraphModule has its own `.graph`
            self.batch = batch

        def forward(self, *args: Any) -> Any:
            n = int(args[0].shape[0]) if args and hasattr(args[0], "shape") else self.batch
            if n == self.batch or n % self.batch:
                return self.program(*args)   # the exported size (or one it cannot cut): let the graph decide
            parts = [self.program(*(a[i:i + self.batch] for a in args)) for i in range(0, n, self.batch)]
            first = parts[0]
            if isinstance(first, torch.Tensor):
                return torch.cat(parts)
            return type(first)(torch.cat([p[j] for p in parts]) for j in range(len(first)))

    return StaticBatch()
