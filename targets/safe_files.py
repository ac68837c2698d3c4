"""The one way edgepipe reads a file it sends to a device or packs into a release: a regular file, not a link.

A file that travels is opened once, by name, with ``O_NOFOLLOW`` from its folder, and refused unless it is a regular
file with a single link whose folder really is (after resolving every link above it) the folder it must be in (the
artifact's, the run's). So a symlinked OpenVINO ``.bin`` or ONNX external-data file cannot smuggle ``~/.ssh/id_*``
onto a board, and a hard link (another name for a file that lives, and can be changed, elsewhere) is never packed
into a signed bundle. The bytes hashed are the bytes of that open file, so what is checked is what is sent.

Files inside edgepipe's own package (the on-device runner) are exempt from the single-link rule only: installers
such as uv hard-link package files from their cache, and whoever can write there already controls edgepipe's code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from targets.errors import ConfigError

CHUNK = 1 << 20
_PACKAGE = Path(os.path.realpath(Path(__file__).parent))


class UnsafeFileError(ConfigError):
    """A file that would travel or be packed is a link, not a regular file, or lies outside its folder."""


def _inside(child: Path, root: Path) -> bool:
    return child == root or child.is_relative_to(root)


@contextlib.contextmanager
def open_regular(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                 *, what: str = "send") -> Iterator[BinaryIO]:
    """``path`` opened for reading, or an UnsafeFileError saying why not (one line, with the fix).

    ``root`` is the folder the file must really be in (default: the folder its name is in); ``what`` says what
    edgepipe was about to do with it ("send", "pack"), for the message.
    """
    p = Path(path)
    folder = Path(os.path.realpath(p.parent))
    limit = Path(os.path.realpath(root)) if root is not None else folder
    if not _inside(folder, limit):
        raise UnsafeFileError(f"{p}: its real location {folder} is outside {limit}; edgepipe does not {what} it",
                              hint=f"copy the file into {limit} instead of linking a folder there")
    if p.name in ("", ".", ".."):
        raise UnsafeFileError(f"{p}: not a file name", hint="give the path of a file")
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFileError(f"{p}: cannot open its folder ({exc.strerror})", hint="check the path") from None
    try:
        # O_NONBLOCK: a FIFO put in a model's place must not hang the open; it is refused below as not regular
        fd = os.open(p.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if os.path.islink(p):
            raise UnsafeFileError(f"{p}: is a symbolic link (to {os.readlink(p)}); edgepipe does not {what} "
                                  "what a link points to", hint="put the file itself there, not a link") from None
        raise UnsafeFileError(f"{p}: cannot open it ({exc.strerror})", hint="check the file exists and is "
                              "readable") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{p}: not a regular file; edgepipe does not {what} it",
                                  hint="put the file itself there")
        if st.st_nlink != 1 and not _inside(folder, _PACKAGE):
            raise UnsafeFileError(f"{p}: has {st.st_nlink} hard links (another name for the same file lives "
                                  f"elsewhere and can change it); edgepipe does not {what} linked files",
                                  hint=f"make it a private copy: cp {p} {p}.copy && mv {p}.copy {p}")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def hash_stream(fh: BinaryIO) -> tuple[str, int]:
    """(sha256, bytes) of what is left to read in ``fh``."""
    digest, n = hashlib.sha256(), 0
    for block in iter(lambda: fh.read(CHUNK), b""):
        digest.update(block)
        n += len(block)
    return digest.hexdigest(), n


def sha256_regular(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                   *, what: str = "send") -> str:
    """The sha256 of a file that passes ``open_regular``."""
    with open_regular(path, root, what=what) as fh:
        return hash_stream(fh)[0]


def size_regular(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                 *, what: str = "send") -> int:
    with open_regular(path, root, what=what) as fh:
        return os.fstat(fh.fileno()).st_size


def check_sha256(path: str | os.PathLike[str], got: str, want: str | None) -> None:
    """A file whose bytes are not the ones recorded when it was made is refused (swapped or edited since)."""
    if want is not None and got != want:
        raise UnsafeFileError(f"{path}: sha256 {got[:16]}... differs from the {want[:16]}... recorded when the "
                              "artifact was made; it changed since", hint="re-export the artifact (or re-run the "
                              "pipeline) instead of editing its files")


def copy_regular(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                 root: str | os.PathLike[str] | None = None, *, sha256: str | None = None,
                 what: str = "send") -> str:
    """Copy a file that passes ``open_regular`` to ``dst`` (temp name + rename) and return the sha256 of the bytes
    copied; with ``sha256`` the copy is refused (nothing left at ``dst``) unless they are those bytes."""
    target = Path(dst)
    with open_regular(src, root, what=what) as fh:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: fh.read(CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            check_sha256(src, digest.hexdigest(), sha256)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return digest.hexdigest()
