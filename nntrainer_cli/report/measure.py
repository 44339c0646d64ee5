"""Memory as measured, not computed: the peak of traced allocations (numpy registers
its buffers with tracemalloc) over a region, and the process's peak RSS."""

from __future__ import annotations

import resource
import tracemalloc


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
        return self

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


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
