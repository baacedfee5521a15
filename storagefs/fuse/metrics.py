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

    __slots__ = ()

    def version(self) -> object:
        return None

    def render(self) -> bytes:
        return metrics.render(self.t.core)

    def mtime_ns(self) -> int:
        return now_ns()
