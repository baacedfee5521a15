"""``MNT/metrics.prom`` (Prometheus text exposition, storagefs/metrics.py) and
``MNT/metrics``, a link to it: node_exporter's textfile collector reads ``*.prom``."""

from __future__ import annotations

from .. import metrics
from ..core.objects import now_ns
from .node import Generated

METRICS_FILE = "metrics.prom"


class MetricsFile(Generated):
    """Rendered at each open from the core's cache (no version: never cached by the
    kernel, read with direct I/O)."""

    __slots__ = ("_last", "_changed_ns")
    live = True  # no attribute caching: stat tells the size a read gets now

    def __init__(self, t, path) -> None:
        super().__init__(t, path)
        self._last = b""
        self._changed_ns = now_ns()

    def version(self) -> object:
        return None

    def render(self) -> bytes:
        data = metrics.render(self.t.core)
        if data != self._last:  # the time of the last change, so tar sees no change
            self._last, self._changed_ns = data, now_ns()
        return data

    def mtime_ns(self) -> int:
        return self._changed_ns
