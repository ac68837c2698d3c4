"""The language model's text and tokenizer, both built here from what ships offline.

Text: the docstrings of a fixed list of standard-library modules and numpy (``inspect.getdoc`` of each module and of
its public members, one level into classes), in a fixed order, up to a character budget -- documentation prose and
code samples, on every machine without a download. Tokenizer: a byte-level BPE (``tokenizers``) trained on that text
and cached beside the teacher, so the teacher, the student and every artifact read the same ids.

The text depends on the installed Python and numpy versions; the cache file names carry a digest of the text, so a
different installation trains its own tokenizer (and teacher) instead of silently reusing mismatched ones.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("EDGEPIPE_EXAMPLES_CACHE", Path(__file__).with_name(".cache")))
VERSION = 1
VOCAB = 1024
CHAR_BUDGET = 600_000
EOT = "<|endoftext|>"

# fixed order: the corpus is the same text on every run on one installation
MODULES = (
    "builtins", "os", "os.path", "sys", "re", "json", "collections", "itertools", "functools", "inspect", "typing",
    "pathlib", "subprocess", "threading", "argparse", "logging", "unittest", "string", "textwrap", "difflib",
    "shutil", "tempfile", "zipfile", "tarfile", "pickle", "copy", "heapq", "bisect", "dataclasses", "enum", "abc",
    "contextlib", "io", "socket", "hashlib", "struct", "array", "queue", "datetime", "decimal", "fractions",
    "statistics", "random", "math", "csv", "sqlite3", "email.message", "http.client", "urllib.parse",
    "xml.etree.ElementTree", "concurrent.futures", "asyncio", "numpy", "numpy.linalg", "numpy.fft", "numpy.random",
    "numpy.polynomial", "numpy.ma",
)


def _docs(module_name: str, seen: set[str]) -> Iterator[str]:
    """The module's docstring, then those of its public classes and functions (and their methods), sorted by name.
    Only routines and classes: an instance's ``getdoc`` is its type's, repeated for every constant. ``seen`` holds
    the texts already given (re-exported names would repeat them)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a module this installation lacks is simply not part of its text
        return

    def doc(obj: Any) -> str | None:
        try:
            text = inspect.getdoc(obj)
        except Exception:  # noqa: BLE001 - odd objects (proxies) may raise on attribute access
            return None
        text = text.strip() if text else ""
        if len(text) < 40 or text in seen:
            return None
        seen.add(text)
        return text

    first = doc(module)
    if first:
        yield first
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        try:
            obj = inspect.getattr_static(module, name)
        except AttributeError:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        text = doc(obj)
        if text:
            yield text
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    text = doc(member)
                    if text:
                        yield text


def documents(budget: int = CHAR_BUDGET, cache: Path | None = None) -> list[str]:
    """The corpus as documents (one docstring each), in a fixed order, until ``budget`` characters.

    Built once per installation in a fresh interpreter (``python -I``) and cached: libraries imported by the
    calling process (torch, the pipeline) patch or re-export standard-library functions, which would change the
    text, and so the tokenizer, from one process to the next."""
    import json
    import platform
    import subprocess
    import sys

    import numpy

    folder = cache or CACHE
    path = folder / f"lm-corpus-v{VERSION}-py{platform.python_version()}-np{numpy.__version__}-{budget}.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        subprocess.run([sys.executable, "-I", str(Path(__file__).resolve()), str(budget), str(tmp)], check=True,
                       capture_output=True, timeout=300)
        os.replace(tmp, path)
    return list(json.loads(path.read_text(encoding="utf-8")))


def collect(budget: int = CHAR_BUDGET) -> list[str]:
    """The documents of ``MODULES`` in this interpreter (``documents`` runs it in a fresh one)."""
    out: list[str] = []
    total = 0
    seen: set[str] = set()
    for module in MODULES:
        for text in _docs(module, seen):
            if total + len(text) > budget:
                return out
            out.append(text)
            total += len(text)
    return out


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.hexdigest()[:12]


def train_tokenizer(texts: list[str], vocab: int = VOCAB) -> Any:
    """A byte-level BPE over ``texts`` (``EOT`` is id 0, the separator between documents)."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab, min_frequency=2, special_tokens=[EOT], show_progress=False)
    return tok


def load(budget: int = CHAR_BUDGET, vocab: int = VOCAB, cache: Path | None = None) -> tuple[Any, list[str]]:
    """(tokenizer, documents): the tokenizer trained on first use and cached as JSON beside the teacher."""
    from tokenizers import Tokenizer

    texts = documents(budget, cache)
    folder = cache or CACHE
    path = folder / f"lm-tokenizer-v{VERSION}-{vocab}-{digest(texts)}.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tok = train_tokenizer(texts, vocab)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tok.save(str(tmp))
        os.replace(tmp, path)
    return Tokenizer.from_file(str(path)), texts


if __name__ == "__main__":   # python -I tokenizer.py BUDGET OUT: the corpus of a clean interpreter, as JSON
    import json
    import sys

    Path(sys.argv[2]).write_text(json.dumps(collect(int(sys.argv[1]))), encoding="utf-8")
