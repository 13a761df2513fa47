"""Ctrl-C and SIGTERM in a search worker, raised only where the trial can still be recorded.

Optuna stores a trial FAIL when its objective raises ``KeyboardInterrupt``. An interrupt
that lands while Optuna creates the trial, samples its parameters or stores its result
leaves the trial RUNNING instead, and only the heartbeat of a later launch fails it. One that
lands inside a store call can leave a database connection in an open transaction, which
on SQLite blocks the writes that would record the trial.

So a worker runs its trials inside :func:`deferred`, where the first signal is only
recorded, and computes inside :func:`immediate`, where it is raised at once. A recorded
signal is raised where a deferred block returns to an immediate one, when an immediate block
starts, and at :func:`raise_pending`. Without :func:`handling` or :func:`install` nothing
is deferred, and Python's own Ctrl-C handling applies.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class _State:
    # Ignore the signals that follow the first one, so the interrupted trial can finish
    # recording its state. Without it a repeated signal is raised wherever it lands.
    once: bool = True
    received: str | None = None
    # Whether a first signal is raised where it lands (outside deferred blocks).
    raising: bool = True


_state = _State()


def _handle(number: int, _frame: Any) -> None:
    name = signal.Signals(number).name
    first = _state.received is None
    if first:
        _state.received = name
    elif _state.once:
        # The handler stays installed and returns. Had it been replaced by SIG_IGN, Python
        # would print an OSError for a signal that arrived together with the first one.
        return
    if first and not _state.raising:
        return
    raise KeyboardInterrupt(f"signal {name}")


def install(*signals: int, once: bool) -> None:
    """Handle ``signals`` in this process from now on (a worker process's whole life).

    ``once``: ignore every signal after the first, so that a second Ctrl-C or the parent's
    SIGTERM cannot cut short the recording of the interrupted trial.
    """
    _state.once = once
    _state.received = None
    _state.raising = True
    for number in signals:
        signal.signal(number, _handle)


@contextmanager
def handling(*signals: int, once: bool) -> Iterator[tuple[int, ...]]:
    """Handle ``signals`` as :func:`install` does inside the block, then restore the
    previous handlers and state. Blocks may nest.

    A signal the process ignores stays ignored, as Ctrl-C is in a background job, and
    outside the main thread, where Python cannot install handlers, none is handled. The
    block receives the signals that are handled.
    """
    handled: tuple[int, ...] = ()
    if threading.current_thread() is threading.main_thread():
        handled = tuple(
            number for number in signals if signal.getsignal(number) is not signal.SIG_IGN
        )
    previous_handlers = {number: signal.getsignal(number) for number in handled}
    previous_state = dataclasses.replace(_state)
    install(*handled, once=once)
    try:
        yield handled
    finally:
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        vars(_state).update(vars(previous_state))


@contextmanager
def deferred() -> Iterator[None]:
    """Record a first signal inside the block without raising it, for store calls.

    The signal is raised when the block ends inside an :func:`immediate` block.
    """
    previous = _state.raising
    _state.raising = False
    try:
        yield
    finally:
        _state.raising = previous
    if previous:
        raise_pending()


@contextmanager
def immediate() -> Iterator[None]:
    """Raise a signal received before the block, and one received inside it at once."""
    raise_pending()
    previous = _state.raising
    _state.raising = True
    try:
        yield
    finally:
        _state.raising = previous


def raise_pending() -> None:
    """Raise ``KeyboardInterrupt`` if a handled signal arrived and was deferred."""
    if _state.received is not None:
        raise KeyboardInterrupt(f"signal {_state.received}")
