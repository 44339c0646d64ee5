"""Memory as measured, not computed: the peak of traced allocations (numpy registers
its buffers with tracemalloc) over a region, and the process's peak RSS."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import tracemalloc


class NoTrace:
    """Stands in for TracedPeak when tracing is off (it slows small kernels down)."""
    peak = None
    peaks_apart = {"loader": None, "writer": None}

    def __enter__(self):
        return self

    @contextlib.contextmanager
    def apart(self, kind: str):
        yield

    def exclude_since_here(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def __exit__(self, *exc):
        return False


class TracedPeak:
    """Peak bytes allocated inside the `with` block beyond what was live at its start.

    `exclude_since_here()` / `resume()` leave out the interpreter objects made in
    between (the executor's array views and contexts: a fixed few KiB of Python
    bookkeeping, not tensor memory), so that small models are judged on their
    tensors: the peak is then the allocations before the pause plus the largest
    excess over the baseline after it."""

    def __enter__(self):
        self.started = not tracemalloc.is_tracing()
        if self.started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        self.kept = 0       # bytes counted before a pause
        self.before = 0     # peak reached before a pause
        self.peak = 0
        # the most reading one batch, and writing one checkpoint, allocated
        self.peaks_apart = {"loader": 0, "writer": 0}
        return self

    @contextlib.contextmanager
    def apart(self, kind: str):
        """I/O around training, measured apart from training memory: "loader" (a batch
        being read: an image decoder's buffers) or "writer" (a checkpoint being written:
        the zip archive's records). Each kind's own peak is reported beside the
        training peak."""
        self.before = self.read()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield
        current, peak = tracemalloc.get_traced_memory()
        self.peaks_apart[kind] = max(self.peaks_apart[kind], peak - start)
        tracemalloc.reset_peak()
        # what the I/O keeps is its own too; what it frees is not: the ints this very
        # bookkeeping replaces net -32 bytes a call, which moved the base down 1.4 KiB
        # an epoch and made the measured peak of a long run drift up
        self.base += max(0, current - start)

    def exclude_since_here(self) -> None:
        current, peak = tracemalloc.get_traced_memory()
        self.kept, self.before = current - self.base, peak - self.base

    def resume(self) -> None:
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0] - self.kept

    def read(self) -> int:
        return max(self.before, tracemalloc.get_traced_memory()[1] - self.base)

    def __exit__(self, *exc):
        self.peak = self.read()
        if self.started:
            tracemalloc.stop()
        return False


_peak_before_resets = 0   # the kernel's high-water mark as it was before RssDelta reset it


def rss_peak_bytes() -> int:
    """The whole process's peak resident memory since it started (this program, not
    the one that spawned it: getrusage's maxrss keeps the parent's image across exec,
    and a benchmark holding 400 MB of weights made its children look 1.2 GB large)."""
    hwm = _status("VmHWM")
    if hwm is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(hwm, _peak_before_resets)


def release_free_memory() -> None:
    """Hand back to the system the memory the allocator keeps once a run's objects are
    gone (glibc's malloc_trim; elsewhere nothing). A process that trains again and
    again should call it between runs, as every command does when it ends: without it,
    300 runs of the digits MLP through the API grew from 47.5 to 66.8 MiB resident,
    with it from 48.2 to 50.6 MiB."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def held_bytes() -> int:
    """The memory this process has allocated itself (anonymous resident pages): what
    its cgroup is charged for it, unlike the shared libraries' file pages in RSS."""
    return _status("RssAnon") or rss_now_bytes() or 0


def rss_now_bytes() -> int | None:
    """The process's resident memory now (None where /proc is missing)."""
    return _status("VmRSS")


UNLIMITED = 1 << 60   # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def memory_limit() -> tuple[int, str]:
    """All the memory this process may use, and where that figure comes from: its
    memory cgroup's limit (v2 `memory.max` up the hierarchy, v1 the hierarchical
    limit in `memory.stat`), else the RAM available now plus what it already holds."""
    limits = []
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and not controllers:       # cgroup v2: the lowest memory.max on the way up
            parts = [p for p in path.split("/") if p]
            for k in range(len(parts), -1, -1):
                value = (_read(os.path.join("/sys/fs/cgroup", *parts[:k], "memory.max"))
                         or "").strip()
                if value.isdigit():
                    limits.append((int(value), "cgroup v2 memory.max"))
        elif "memory" in controllers.split(","):
            stat = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.stat")
            for row in (_read(stat) or "").splitlines():
                if row.startswith("hierarchical_memory_limit "):
                    limits.append((int(row.split()[1]), "cgroup v1 memory limit"))
    limits = [(b, src) for b, src in limits if b < UNLIMITED]
    if limits:
        return min(limits)
    available = _kib_field("/proc/meminfo", "MemAvailable")
    if available is None:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    return available + held_bytes(), "RAM available to this process"


READ_SIZE = 1 << 14


def _read(path: str) -> str | None:
    """A small kernel file's text, or None where it is missing. One unbuffered read
    loop: a buffered open allocates 128 KiB, which tracemalloc would count."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:   # these files fit one read: a second one (its buffer made while the first
        chunks = [os.read(fd, READ_SIZE)]   # is held) only when the first came back full
        while len(chunks[-1]) == READ_SIZE:
            chunks.append(os.read(fd, READ_SIZE))
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def _kib_field(path: str, field: str) -> int | None:
    """A `Field:   N kB` line of a /proc file (status, meminfo) in bytes."""
    for line in (_read(path) or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _status(field: str) -> int | None:
    """A field of /proc/self/status in bytes."""
    return _kib_field("/proc/self/status", field)


class RssDelta:
    """Peak RSS over a region minus the RSS at its start: memory the region itself
    needed, measured the same way for any framework. The kernel's high-water mark is
    reset at the start where Linux allows it (/proc/self/clear_refs), so start-up
    peaks (imports, data loading) do not hide in it; `reset` says whether it was."""

    def __enter__(self):
        global _peak_before_resets
        _peak_before_resets = max(_peak_before_resets, _status("VmHWM") or 0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status("VmHWM")
        self.delta = None if peak is None or self.base is None else max(0, peak - self.base)
        return False
