"""The swap file and the thread that moves tensors between it and the arena.

One file per run, created in the swap directory and unlinked at once, so the kernel
frees it when the run ends, whatever ends it. Operations run in the order they are
submitted (FIFO), so a load into bytes that a store is still reading from always comes
after that store. The compute
thread waits only for the operation a slot really needs.

When the background thread is idle, the compute thread does an operation itself if it
cannot block on the disk: a store (into the page cache) or a load the page cache holds
(preadv with RWF_NOWAIT). Such a copy costs less than handing it to another thread: on
a machine whose cores are busy with the matrix products, the handoffs and the contention
for Python's GIL cost more than the copy. Loads that must come from the disk, and every
operation under O_DIRECT, go to the thread, which overlaps the wait with compute."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import tempfile
import threading
import time
from typing import NamedTuple

import numpy as np

from nntrainer_cli.errors import DataError
from nntrainer_cli.plan.swap_plan import DIRECT_IO_BLOCK

NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+: read only what the page cache holds


def check_swap_dir(directory: str) -> None:
    if not os.path.exists(directory):
        raise DataError(f"swap directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise DataError(f"swap directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataError(f"swap directory {directory} is not writable")


def direct_io_works(directory: str) -> bool:
    """Whether a file in `directory` takes O_DIRECT writes and reads of a block (some
    file systems refuse the flag, some the I/O)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd, path = tempfile.mkstemp(prefix="nntrainer-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    block = mmap.mmap(-1, DIRECT_IO_BLOCK)   # page-aligned, as O_DIRECT needs
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            return os.pwritev(fd, [block], 0) == os.preadv(fd, [block], 0) == len(block)
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        block.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


class Job(NamedTuple):
    """Arena stays that lie back to back in the swap file and move at the same time."""
    op: str                 # "in" (load) or "out" (store)
    at: int                 # file offset
    bufs: list[memoryview]  # the stays' bytes in the arena
    nbytes: int

    @classmethod
    def of(cls, op: str, at: int, views: list[np.ndarray]) -> Job:
        return cls(op, at, [v.data.cast("B") for v in views], sum(v.nbytes for v in views))


class SwapFile:
    """With `direct`, the file bypasses the page cache (O_DIRECT): every read really
    comes from the disk, for honest benchmarks; buffers and sizes are block-aligned."""

    def __init__(self, directory: str, size: int, direct=False):
        check_swap_dir(directory)
        self.directory, self.direct = directory, direct
        try:
            fd, self.path = tempfile.mkstemp(prefix="nntrainer-swap-", suffix=".bin",
                                             dir=directory)
        except OSError as e:
            raise DataError(f"cannot create a swap file in {directory}: {e.strerror}") from None
        try:
            if direct:
                os.close(fd)
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_DIRECT)
                except OSError as e:
                    raise DataError(f"{directory} does not allow direct I/O (O_DIRECT): "
                                    f"{e.strerror}") from None
        finally:
            # Unlinked at once: the kernel frees the file when the last descriptor closes,
            # so no swap file outlives its run, however the run ends (even SIGKILL).
            os.unlink(self.path)
        self.fd = fd
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            self.close()
            raise DataError(f"cannot size the swap file in {directory}: {e.strerror}") from None

    def move(self, job: Job, flags: int = 0) -> None:
        """Runs one job; a load with flags=RWF_NOWAIT raises BlockingIOError instead of
        waiting for the disk."""
        at, bufs, left, load = job.at, job.bufs, job.nbytes, job.op == "in"
        while True:
            n = os.preadv(self.fd, bufs, at, flags) if load else os.pwritev(self.fd, bufs, at)
            if n == left:
                return
            if n == 0:
                raise OSError(errno.EIO, "the swap file ended early") if load else \
                    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            at, left = at + n, left - n  # a short transfer: go on from where it ended
            while n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs = bufs[1:]
            bufs = [bufs[0][n:], *bufs[1:]]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class SwapIO:
    """A background thread running loads and stores; `wait(n)` blocks until the n-th
    submitted operation is done, and re-raises a failed one as a DataError."""

    def __init__(self, file: SwapFile, inline: bool = True):
        self.file = file
        self.inline = inline and NOWAIT is not None
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.submitted = self.done = 0
        self.error: DataError | None = None
        self.waited = self.inline_seconds = 0.0
        self.moved_in = self.moved_out = self.loads_inline = self.loads_background = 0
        self.thread = threading.Thread(target=self._run, name="nntrainer-swap", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> int:
        self.submitted += 1
        if self.inline and self.done == self.submitted - 1:  # the thread is idle
            start = time.perf_counter()
            if self._move(job, NOWAIT):
                self.done += 1
                self.inline_seconds += time.perf_counter() - start
                if self.error is not None:
                    raise self.error
                return self.submitted
        self.jobs.put(job)
        return self.submitted

    def _move(self, job: Job, flags: int = 0) -> bool:
        """One job; False when a load with `flags` would have to wait for the disk (the
        caller hands it to the thread). A failure is kept for the next wait."""
        if self.error is not None:
            return True
        try:
            self.file.move(job, flags)
            if job.op == "out":
                self.moved_out += job.nbytes
            else:
                self.moved_in += job.nbytes
                if flags:
                    self.loads_inline += len(job.bufs)
                else:
                    self.loads_background += len(job.bufs)
        except BlockingIOError:
            return False
        except OSError as e:
            if flags and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.inline = False  # the file system cannot tell; the thread does it all
                return False
            self.error = DataError(f"swap file in {self.file.directory}: {e.strerror or e}; "
                                   "the run stopped (weights saved so far are intact)")
        return True

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self._move(job)
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def wait(self, n: int) -> None:
        if self.done < n:
            start = time.perf_counter()
            with self.cond:
                while self.done < n:
                    self.cond.wait()
            self.waited += time.perf_counter() - start
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        self.wait(self.submitted)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        self.file.close()


def open_swap(plan, options, size: int = 0) -> SwapIO | None:
    """The run's swap file (of at least `size` bytes: another plan shares it) and I/O
    thread when its plan swaps (else None); the caller closes it."""
    if plan.swap is None:
        return None
    return SwapIO(SwapFile(options.directory, max(plan.swap.file_bytes, size), options.direct),
                  inline=not options.direct)
