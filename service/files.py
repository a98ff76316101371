"""Atomic file writes: a temporary file beside the target, renamed over it, so a reader sees the old file or the
new one, never half of one.

What the target already is decides: a symlink is followed (the file it points at is replaced, the link stays);
a regular file keeps its mode; a new file gets the usual `0o666 & ~umask` (or the mode asked for). Anything
else (a folder, a character device such as /dev/null, a FIFO, a socket) is refused before anything is written:
renaming over it would replace the device node itself, for the whole system when run as root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


class WriteError(ValueError):
    """The file cannot be written there; nothing was. `reason` is the short why, for callers' own messages."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.reason = reason


def write_target(path: Path) -> tuple[Path, int | None]:
    """(the file a write to `path` replaces, with symlinks followed; its mode, None if it does not exist yet), or
    WriteError where it is no regular file."""
    real = Path(os.path.realpath(path))
    try:
        st = real.stat()
    except FileNotFoundError:
        return real, None
    except OSError as e:  # a parent that is a file (ENOTDIR), no permission to look
        raise WriteError(path, e.strerror or str(e)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        where = f" ({real})" if real != Path(os.path.abspath(path)) else ""
        raise WriteError(path, f"it is {kind}{where}, not a regular file; give a file path")
    return real, stat.S_IMODE(st.st_mode)


def atomic_write(
    path: Path,
    content: str | bytes | Iterable[str],
    *,
    new_mode: int = 0o666,
    make_parents: bool = False,
) -> Path:
    """Write `content` (text, bytes, or text pieces written as they come) to `path` atomically; returns the file
    written (symlinks followed). WriteError, with nothing written and no temporary file left, where it cannot
    be; an exception raised while producing the pieces propagates the same way. `new_mode` is the mode of a
    file that did not exist (the umask applies); an existing file keeps its own."""
    real, mode = write_target(path)
    if make_parents:
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = f"{e.filename} is a file, so the folder cannot be made" if isinstance(e, FileExistsError) else None
            raise WriteError(path, reason or e.strerror or str(e)) from None
    tmp = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), new_mode)
    except OSError as e:
        raise WriteError(path, e.strerror or str(e)) from None
    try:
        with os.fdopen(fd, "wb") as out:
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            if isinstance(content, bytes):
                out.write(content)
            elif isinstance(content, str):
                out.write(content.encode("utf-8"))
            else:
                for piece in content:
                    out.write(piece.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, real)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a failing cleanup must not hide the real error
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteError(path, e.strerror or str(e)) from None
        raise
    return real


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file (symlinks and hard links included); False where either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
