"""Ctrl-C on the shell that waits in write(): cancel the operation it asked for.

pyfuse3 does not pass FUSE interrupts on, but a process blocked in a FUSE
write() keeps its signal pending until the request is answered, so the
kernel's /proc/PID/status tells us: a pending SIGINT, SIGTERM, SIGHUP or
SIGKILL (or a process that is gone) cancels the operation, which then cleans up
after itself, and the write() fails with EINTR.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from pyfuse3 import FUSEError

T = TypeVar("T")
POLL_SECONDS = 0.1
_STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL, signal.SIGQUIT)
_MASK = sum(1 << (s - 1) for s in _STOP)


def stop_signal_pending(pid: int, if_gone: bool) -> bool:
    """True when pid has a stop signal pending; ``if_gone`` when it does not exist."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & _MASK:
                    return True
    except (OSError, ValueError):
        return if_gone
    return False


def wants_to_stop(pid: int) -> bool:
    """True when pid has a pending stop signal, or does not exist any more."""
    return stop_signal_pending(pid, if_gone=True)


async def interruptible(pid: int, fn: Callable[[], Awaitable[T]],
                        on_interrupt: Callable[[], None]) -> T:
    """Run fn(); if the requesting process gets a stop signal meanwhile, cancel it."""
    interrupted = False
    result: list[T] = []
    errors: list[Exception] = []

    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            nonlocal interrupted
            while True:
                await trio.sleep(POLL_SECONDS)
                if wants_to_stop(pid):
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        async def run() -> None:
            # errors are carried out of the nursery as they are (not in an ExceptionGroup)
            try:
                result.append(await fn())
            except Exception as exc:
                errors.append(exc)
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(run)
    if errors:
        raise errors[0]
    if interrupted and not result:
        on_interrupt()
        raise FUSEError(errno.EINTR)
    return result[0]
