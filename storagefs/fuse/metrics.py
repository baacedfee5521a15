"""``MNT/metrics.prom`` (Prometheus text exposition, storagefs/metrics.py) and
``MNT/metrics``, a link to it: node_exporter's textfile collector reads ``*.prom``."""

from __future__ import annotations

from .. import metrics
from ..core.objects import now_ns
from .handles import Handle, ReadHandle
from .node import Generated
from .tree import tgid

METRICS_FILE = "metrics.prom"


class MetricsFile(Generated):
    """Rendered from the core's cache when what it is made of changed (metrics.stamp),
    else the bytes of the last rendering (no version: never cached by the kernel, read
    with direct I/O; stat asks each time, and gets the size a read gets)."""

    __slots__ = ("_last", "_changed_ns", "_stamp", "_pinned")
    live = True  # no attribute caching: stat tells the size a read gets now

    def __init__(self, t, path) -> None:
        super().__init__(t, path)
        self._last = b""
        self._changed_ns = now_ns()
        self._stamp: tuple | None = None
        #: process -> the bytes its open handles hold: its fstat tells their size, so
        #: grep's open-fstat-read agrees with itself while the exposition changes
        self._pinned: dict[int, list[bytes]] = {}

    def open_read_by(self, pid: int) -> Handle:
        data = self.content()
        held = self._pinned.setdefault(tgid(pid), [])
        held.append(data)
        return _PinnedHandle(data, self, tgid(pid))

    def pinned_size(self, pid: int) -> int | None:
        """The size of what this process has open (the newest of its opens), if any."""
        if not self._pinned:
            return None
        held = self._pinned.get(tgid(pid))
        return len(held[-1]) if held else None

    def unpin(self, who: int, data: bytes) -> None:
        held = self._pinned.get(who)
        if held:
            for i in range(len(held) - 1, -1, -1):
                if held[i] is data:
                    del held[i]
                    break
            if not held:
                del self._pinned[who]

    def version(self) -> object:
        return None

    def render(self) -> bytes:
        stamp = metrics.stamp(self.t.core)
        if stamp == self._stamp:
            return self._last
        self._stamp = stamp
        data = metrics.render(self.t.core)
        if data != self._last:  # the time of the last change, so tar sees no change
            self._last, self._changed_ns = data, now_ns()
        return data

    def mtime_ns(self) -> int:
        return self._changed_ns


class _PinnedHandle(ReadHandle):
    def __init__(self, data: bytes, node: MetricsFile, who: int) -> None:
        super().__init__(data)
        self.node, self.who = node, who

    def release(self) -> None:
        self.node.unpin(self.who, self.snapshot)
