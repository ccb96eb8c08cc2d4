"""SIGINT and SIGTERM from the first moment of the process, for a start-up that stops at once.

Installed by the CLI before anything heavy is imported. A signal raises `KeyboardInterrupt`, which
interrupts blocking start-up code (the embedded server's launch) right away; Python drops such an
exception in a few places (at-fork hooks, finalizers), so the signal is also latched, and the
event loop's handlers (`runner.stop_on_signals`) treat a latched signal as already received.
Signals are process-wide, hence the module-level latch.
"""

from __future__ import annotations

import signal
from typing import NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _on_signal(signum: int, _frame: object) -> NoReturn:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM latch and interrupt (until an event loop takes them over)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def received() -> bool:
    """Whether SIGINT or SIGTERM arrived since `install`."""
    return bool(_received)
