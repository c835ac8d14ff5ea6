"""SIGTERM/SIGINT during a wait that comes before the process's own shutdown handling (the wait
for Kafka): the wait ends at once, and what was started is stopped in order with a line saying
so, instead of the signal's default action ending the process without a word."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def catch_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[signal.Signals]:
    """Set `stop` on SIGTERM/SIGINT from now until other handlers replace these; returns the list
    the signals received are appended to. A signal that arrives while the loop is not running (a
    blocking start) is handled once it runs again."""
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    return received


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[list[signal.Signals]]:
    """catch_stop_signals while inside; the default actions again after."""
    try:
        yield catch_stop_signals(loop, stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> asyncio.Future[T] | None:
    """`work` run to its end (the finished future), or None as soon as `stop` is set (then it is
    cancelled, and waited for so that its clean-up has run)."""
    running = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return None if running.cancelled() else running
