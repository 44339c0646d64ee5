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


SYNC_BYTES = 4 << 20   # a binary file is synced and dropped from the page cache this often


class _SyncedAsWritten:
    """A binary file that syncs what it has written every SYNC_BYTES and drops those
    pages from the page cache. A memory cgroup counts a file's dirty pages against the
    process that writes them: saving a 90 MB weight file under an 80 MiB limit filled
    the limit with them (measured: 131 times at the limit, reclaim waiting on the disk),
    and the kernel killed the run when the disk was slow."""

    def __init__(self, f):
        self._f, self._since = f, 0

    def write(self, data) -> int:
        n = self._f.write(data)
        self._since += n
        if self._since >= SYNC_BYTES:
            self._f.flush()
            getattr(os, "fdatasync", os.fsync)(self._f.fileno())   # macOS: fsync only
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self._since = 0
        return n

    def __getattr__(self, name):   # seek, tell, flush, ...: the file's own
        return getattr(self._f, name)


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
            yield _SyncedAsWritten(f) if "b" in mode else f
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
