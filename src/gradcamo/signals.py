"""How a command stops on SIGINT (Ctrl-C) and SIGTERM: one exception in the main process,
none in the worker processes it starts."""

import contextlib
import signal
import threading
from collections.abc import Iterator

from gradcamo.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _stop(number, frame):
    for other in STOP_SIGNALS:  # one stop is enough: cleaning up is not interrupted again
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(f"stopped by {signal.Signals(number).name}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`~gradcamo.errors.Interrupted`
    (further ones are ignored while it unwinds); the handlers before are restored after it.
    Outside the main thread (where Python delivers signals) it does nothing."""
    if not _in_main_thread():
        yield
        return
    previous = {number: signal.signal(number, _stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT (an ignored signal stays ignored across
    ``exec``). Ctrl-C in a terminal reaches the whole process group: the client stops the run
    and closes its workers, instead of every worker printing its own KeyboardInterrupt."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["STOP_SIGNALS", "children_ignore_sigint", "stop_on_signals"]
