"""Graceful stop on SIGTERM / SIGINT: the current step finishes, a checkpoint is written, the run returns.

Cluster schedulers (and ``torchrun`` when it is stopped) send SIGTERM before they kill; a second SIGINT
(Ctrl-C twice) still interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["GracefulInterrupt"]


class GracefulInterrupt:
    """Context manager that turns SIGTERM/SIGINT into a flag (``requested``) instead of an exception."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signum

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""
