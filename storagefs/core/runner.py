"""Each pool's storage work: syscalls in worker threads with time limits, and a task
group of its own for its background work, so that a pool whose storage hangs holds up
only its own operations (SPEC "No call waits on storage").

A syscall on storage that stopped answering (an NFS server gone, a FUSE server stopped)
sleeps in the kernel and cannot be interrupted: it runs in a thread of the pool's own
limiter, and when it overruns its time limit the caller gets EIO at once while the
thread is left behind. Until it comes back the pool is *stuck*: every new call fails at
once with the reason, and the registry marks the pool inaccessible.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .. import hostcmd
from ..errors import UNREACHABLE, StorageError, from_oserror

log = logging.getLogger(__name__)

T = TypeVar("T")
#: default time limit of one storage syscall (capped by $STORAGEFS_TOOL_TIMEOUT)
STORAGE_TIMEOUT = 30.0
#: worker threads one pool may use at once
THREADS_PER_POOL = 4


def storage_limit(timeout: float | None = None) -> float:
    return hostcmd.limit(timeout or STORAGE_TIMEOUT)


class PoolRunner:
    """Storage calls and background tasks of one pool."""

    def __init__(self, name: str, on_stuck: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.limiter = trio.CapacityLimiter(THREADS_PER_POOL)
        self.on_stuck = on_stuck
        self._lock = threading.Lock()
        #: calls that overran their limit and have not returned yet
        self._overdue = 0
        self._stuck_since = 0.0
        self._stuck_what = ""
        self._scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None

    # ---- storage calls --------------------------------------------------------
    @property
    def stuck(self) -> bool:
        return self._overdue > 0

    def stuck_reason(self) -> str:
        secs = int(time.monotonic() - self._stuck_since)
        return (f"storage of pool '{self.name}' not responding for {secs} s "
                f"({self._stuck_what})")

    def check(self) -> None:
        """Refuse at once while an earlier call is still hung in the kernel."""
        if self._overdue:
            raise StorageError(self.stuck_reason(), errno.EIO)

    async def recovered(self, grace: float = 2.0) -> None:
        """For an explicit start or refresh: calls that were hung may be returning right
        now (the storage is back): give them ``grace`` seconds, then check()."""
        with trio.move_on_after(grace):
            while self._overdue:
                await trio.sleep(0.05)
        self.check()

    async def io(self, fn: Callable[..., T], *args: Any, what: str = "",
                 timeout: float | None = None) -> T:
        """fn(*args) in one of the pool's threads, within the storage time limit."""
        self.check()
        limit = storage_limit(timeout)
        state = {"late": False, "done": False}
        started = time.monotonic()
        label = what or getattr(fn, "__name__", "storage call")

        def work() -> T:
            try:
                return fn(*args)
            except OSError as exc:
                if exc.errno in UNREACHABLE:  # whatever call it was: the server is gone
                    raise from_oserror(exc, label) from None
                raise
            finally:
                with self._lock:
                    state["done"] = True
                    if state["late"]:
                        self._overdue -= 1
                        late = time.monotonic() - started
                        log.warning("pool %s: %s returned after %.0f s", self.name, label,
                                    late)

        with trio.move_on_after(limit) as scope:
            return await trio.to_thread.run_sync(work, abandon_on_cancel=True,
                                                 limiter=self.limiter)
        if scope.cancelled_caught:
            with self._lock:
                if not state["done"]:
                    state["late"] = True
                    if self._overdue == 0:
                        self._stuck_since, self._stuck_what = started, label
                    self._overdue += 1
            reason = self.stuck_reason() if self.stuck else \
                f"storage of pool '{self.name}' took over {limit:g} s ({label})"
            if self.stuck and self.on_stuck is not None:
                self.on_stuck(reason)
            raise StorageError(reason, errno.EIO)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- background tasks -------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The pool's task group: runs (in the registry's nursery) until stop_tasks()."""
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        self.nursery = None

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) in the pool's task group; an exception it lets out is logged
        (a pool's trouble never ends the mount)."""
        if self.nursery is not None:
            self.nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("pool %s: background task %s failed", self.name,
                          getattr(fn, "__name__", fn))

    def stop_tasks(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.nursery = None
