"""`kill -USR1 <pid>`: log every asyncio task of the worker with the line it waits on.

For a worker that looks stuck (lag grows, nothing is logged): which step waits for what (the
broker's acknowledgements, a seek, Faust's producer buffer) shows up at once, without a restart
that would hide it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger("prefect_events")


#: More to log on SIGUSR1 (the worker registers its consumer's partition states).
reports: list[Callable[[], str]] = []


def dump_tasks() -> None:
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out = io.StringIO()
    for report in reports:
        out.write(report() + "\n")
    for task in tasks:
        out.write(f"--- {task.get_name()}\n")
        for where in awaiting(task.get_coro()):
            out.write(f"    {where}\n")
    log.warning("SIGUSR1: %d asyncio tasks\n%s", len(tasks), out.getvalue())


def awaiting(coro: Any) -> list[str]:
    """The chain of coroutines (and async generators) a task is suspended in, outermost first."""
    chain: list[str] = []
    while coro is not None and len(chain) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        frame = frame or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            chain.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        coro = nxt or getattr(coro, "gi_yieldfrom", None)
    return chain


def ignore_debugger_signal() -> None:
    """SIGUSR2. mode's Worker answers it with pdb on the event loop: with stdin open (a pipe, a
    container run with -i) the worker then waits for a debugger command forever, holding its
    partitions and processing nothing."""
    log.warning("SIGUSR2 ignored: this worker does not start a debugger (kill -USR1 logs its tasks)")


async def install() -> None:
    """An app task: runs once on the worker's event loop."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
