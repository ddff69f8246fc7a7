"""Opening files a user (or a stranger's zoo) names, without blocking and only if they are files.

A FIFO, socket or device named ``model.safetensors`` would make a plain ``open()`` wait forever
for a writer (FIFO) or read endless bytes (``/dev/zero``). Everything nwa reads from a path it was
given goes through :func:`open_regular`: it opens with ``O_NONBLOCK`` (which changes nothing for
regular files) and refuses anything ``fstat`` does not call a regular file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (a FIFO, device, socket or folder)."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path}: is {kind}, not a regular file")
        self.path, self.kind = path, kind


def file_kind(mode: int) -> str | None:
    """``None`` for a regular file, else what the ``st_mode`` says it is (``"a FIFO ..."``)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for unbuffered binary reading; never blocks.

    Raises:
        FileNotFoundError: The path (or a folder on it) does not exist.
        NotRegularFileError: It is a FIFO, device, socket or folder.
        PermissionError: It cannot be read.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except IsADirectoryError:
        raise NotRegularFileError(Path(path), "a folder") from None
    except NotADirectoryError:
        raise FileNotFoundError(2, "No such file or directory", str(path)) from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFileError(Path(path), kind)
        return open(fd, "rb", buffering=0, closefd=True)  # noqa: SIM115 - the caller closes it
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, limit: int) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes.

    Raises:
        FileNotFoundError, NotRegularFileError, PermissionError: As :func:`open_regular`.
        ValueError: The file is larger than ``limit``.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path}: {size} bytes, more than the {limit} this file may hold")
        return f.read(limit + 1)[:limit]


def real_location_inside(path: str | Path, folder: Path) -> Path | None:
    """``None`` if ``path``'s real location (symlinks followed) lies inside the real folder
    ``folder``; else that real location."""
    real = Path(os.path.realpath(path))
    return None if real == folder or folder in real.parents else real


def writable_folder(folder: Path) -> str | None:
    """``None`` if ``folder`` exists or can be created and a file can be written in it; else why
    not (``"Read-only file system"``). Checks by doing, as root ignores permission bits."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None
