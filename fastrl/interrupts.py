"""Ctrl-C and SIGTERM: finish the current phase, write a checkpoint, exit 130 / 143.

The handler only records the signal. The train loop polls `StopRequest.requested` between vector
steps, where the agent, buffer and counters agree with each other and a checkpoint means something;
raising KeyboardInterrupt in the middle of a buffer write or an optimizer step would not give that.
A second signal means "stop now": it raises KeyboardInterrupt and the run exits without writing a
checkpoint, so the last one written is kept.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    signum: int | None = None
    by_caller: bool = False  # the API's callback returned False

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.by_caller

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """The shell's convention, 128 + signal number: 130 for SIGINT, 143 for SIGTERM; 0 without a signal."""
        return 128 + self.signum if self.signum is not None else 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a `StopRequest` while the block runs; restore the old handlers after."""
    stop = StopRequest()

    def handler(signum: int, _frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signum = signum

    if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
        yield stop
        return
    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
