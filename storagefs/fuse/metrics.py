"""``MNT/metrics.prom`` (Prometheus text exposition, storagefs/metrics.py) and
``MNT/metrics``, a link to it: node_exporter's textfile collector reads ``*.prom``."""

from __future__ import annotations

from .. import metrics
from ..core.objects import now_ns
from .node import Generated

METRICS_FILE = "metrics.prom"


class MetricsFile(Generated):
    """Rendered from the core's cache when what it is made of changed (metrics.stamp),
    else the bytes of the last rendering (no version: never cached by the kernel, read
    with direct I/O; stat asks each time, and gets the size a read gets)."""

    __slots__ = ("_last", "_changed_ns", "_stamp")
    live = True  # no attribute caching: stat tells the size a read gets now

    def __init__(self, t, path) -> None:
        super().__init__(t, path)
        self._last = b""
        self._changed_ns = now_ns()
        self._stamp: tuple | None = None

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
