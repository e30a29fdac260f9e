"""Signals for the commands that start processes of their own (``cascade demo``, ``cascade sweep``)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises ``SystemExit(143)`` in the main thread; the previous handler is restored after.

    The commands that start a broker and agents stop them in ``finally:``, which the default
    SIGTERM action (exit at once) skips: ``kill``, systemd or a CI timeout would leave them
    running. Only the first SIGTERM raises: a second one must not cut that cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's alone
        yield
        return
    fired = False

    def _exit(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    except SystemExit:
        if fired:
            print("cascade: terminated; its broker and agents are stopped", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
