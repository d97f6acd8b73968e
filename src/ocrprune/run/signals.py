"""SIGINT, SIGTERM and SIGHUP stop a run the same way (as `Interrupted`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from ocrprune.errors import Interrupted


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted(signum)` for the length of a run.

    `timeout`, systemd, Docker, Kubernetes and Slurm stop jobs with SIGTERM; a closed terminal
    sends SIGHUP. All three then stop the run like Ctrl-C. Only the main thread can install
    handlers; elsewhere (a library caller's worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, interrupt) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
