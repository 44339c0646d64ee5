"""Writing output files safely: checked before a long run starts, and written to a
temp file renamed over the target, so an interrupted run never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from nntrainer_cli.errors import DataError


def check_writable(path: str, what: str = "output") -> None:
    """Fail before the work, not after it, when the result could not be written."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise DataError(f"cannot write {what}: {path} is a directory")
    if not os.path.isdir(directory):
        raise DataError(f"cannot write {what} {path}: no such directory {directory}")
    if not os.access(directory, os.W_OK):
        raise DataError(f"cannot write {what} {path}: directory {directory} is not writable")


def _permissions(path: str) -> int:
    """What a plain open() would leave: an existing file's mode, else 0666 less the umask
    (mkstemp's temp files are 0600, which would lock other users out of the result)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """Open a temp file beside `path`; on success it is synced and renamed over it."""
    check_writable(path)
    if os.path.exists(path) and not os.path.isfile(path):
        # a device or a pipe (/dev/stdout, /dev/null): written in place, never replaced
        with open(path, mode) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.fchmod(fd, _permissions(path))
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    try:
        with atomic_open(path) as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror}") from None
