"""Stopping at an iteration boundary: while training, SIGINT and SIGTERM only ask for
a stop, which the loop takes after the step in progress (so a checkpoint of a whole
iteration can be written); a second signal stops at once."""

from __future__ import annotations

import signal
import threading

from nntrainer_cli.errors import Terminated


class StopRequests:
    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        self.arm()
        return self

    def arm(self) -> None:
        """Take SIGINT and SIGTERM (again: Flower's server installs its own handlers)."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old = signal.signal(s, self._request)
                self.previous.setdefault(s, old)

    def _request(self, signum, frame) -> None:
        if self.signum is not None:   # asked twice: stop now
            self._raise(signum)
        self.signum = signum

    @staticmethod
    def _raise(signum: int) -> None:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def check(self) -> None:
        """Stop here if a stop was asked for."""
        if self.signum is not None:
            self._raise(self.signum)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
