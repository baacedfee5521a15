"""A service systemd can trust: the notify protocol (sd_notify(3)) by hand, and journal
logging when stderr is the journal.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a datagram socket: a path, or
``@name`` in the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``). storagefs sends ``READY=1`` once the tree answers, ``STATUS=``
with its pool counts (again when they change), ``WATCHDOG=1`` every half interval
while the tree still answers a listing of its root (a request through the kernel,
answered by the same loop that answers everyone: a wedged storagefs stops pinging and
systemd restarts it), and ``STOPPING=1`` when it begins to stop. The variables are
removed from the environment, so host tools never talk to systemd in its name.

Without ``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, MutableMapping

import trio

log = logging.getLogger(__name__)

#: how often STATUS= is brought up to date when there is no watchdog
STATUS_EVERY = 5.0


class Notifier:
    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        pid = env.pop("WATCHDOG_PID", "")
        self.address: str | bytes | None = None
        if address.startswith("@"):
            self.address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self.address = address
        elif address:
            log.warning("NOTIFY_SOCKET=%s is not a socket path: systemd is not notified",
                        address)
        self.watchdog: float | None = None
        try:
            if usec and (not pid or int(pid) == os.getpid()) and int(usec) > 0:
                self.watchdog = int(usec) / 1e6
        except ValueError:
            log.warning("WATCHDOG_USEC=%s / WATCHDOG_PID=%s not understood", usec, pid)
        self._sock: socket.socket | None = None
        self._status = ""
        self.stopped = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when it could not be sent."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._status and not self.stopped:
            self._status = status
            self.send(f"STATUS={status}")

    def stopping(self, why: str = "stopping") -> None:
        if not self.stopped:
            self.stopped = True
            self.send("STOPPING=1", f"STATUS={why}")

    async def run(self, status: Callable[[], str], alive: Callable[[], object]) -> None:
        """Until cancelled or stopping: STATUS= when it changed and, with a watchdog,
        WATCHDOG=1 each half interval while ``alive()`` (run in a thread) returns in
        time. Never raises (the mount must not end over it)."""
        if self.address is None:
            return
        every = self.watchdog / 2 if self.watchdog else STATUS_EVERY
        while not self.stopped:
            await trio.sleep(every)
            if self.stopped:
                return
            try:
                self.status(status())
            except Exception:
                log.exception("status for systemd failed")
            if self.watchdog and await self._answers(alive, every):
                self.send("WATCHDOG=1")

    @staticmethod
    async def _answers(alive: Callable[[], object], limit: float) -> bool:
        with trio.move_on_after(limit):
            try:
                await trio.to_thread.run_sync(alive, abandon_on_cancel=True)
            except OSError as exc:
                log.warning("watchdog: the tree does not answer: %s", exc)
                return False
            return True
        log.warning("watchdog: the tree did not answer within %.1f s", limit)
        return False


# ---- the journal ------------------------------------------------------------------
#: syslog priorities of Python's levels (REFUSED, 25, is a notice)
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (25, 5),
              (logging.INFO, 6))


def stderr_is_journal(env: MutableMapping[str, str] | None = None) -> bool:
    """$JOURNAL_STREAM names the device and inode of the journal's stream: true when
    stderr is that stream (systemd's own test; a redirected stderr is not)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def priority(levelno: int) -> int:
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return 7


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>`` before every line (journald reads it, and adds time and pid);
    the lines of a traceback keep the record's priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())
