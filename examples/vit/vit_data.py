"""The digits data of the built-in demo (scikit-learn's load_digits at 32x32, the same fixed split), reused as is."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def sibling(name: str, path: Path) -> ModuleType:
    """Import a module by file path under a unique name (examples share no package; names must not collide)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def splits() -> dict[str, Any]:
    """train 80% / eval 20% (stratified, seed 0), calib = 256 training images: the digits demo's split."""
    return sibling("edgepipe_digits_data", Path(__file__).parents[1] / "digits" / "data.py").splits()
