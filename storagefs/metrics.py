"""``MNT/metrics.prom``: what storagefs knows, in Prometheus's text exposition format
(version 0.0.4: ``# HELP``, ``# TYPE``, samples; no timestamps, which node_exporter's
textfile collector refuses).

Rendered at each open from the core's cache alone: pool and volume figures as the
last refresh left them (refreshed in the background, SPEC "No call waits on
storage"), the events the core emitted and the refusals it recorded, and how long
host tools took (``hostcmd`` records each run in :data:`TOOLS`). Nothing here calls a
backend or a host tool.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .core.registry import Registry

POOL_STATES = ("inactive", "building", "running", "degraded", "inaccessible")
#: upper bounds (seconds) of the host tool duration histogram
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(TOOL_BUCKETS))
    total: int = 0
    sum: float = 0.0
    failures: int = 0


class ToolTimes:
    """How long each host tool took (by the basename of argv[0]), and how often it
    failed (a non-zero exit, a time-out, a kill)."""

    def __init__(self) -> None:
        self.tools: dict[str, Histogram] = {}

    def observe(self, tool: str, seconds: float, failed: bool) -> None:
        h = self.tools.setdefault(tool.rsplit("/", 1)[-1], Histogram())
        i = bisect.bisect_left(TOOL_BUCKETS, seconds)
        if i < len(h.counts):
            h.counts[i] += 1
        h.total += 1
        h.sum += seconds
        h.failures += failed


#: every host tool run of this process (hostcmd._run_tool records here)
TOOLS = ToolTimes()


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


Sample = tuple[dict[str, str], float]


class Exposition:
    """Families in the text format; a family with no samples is left out."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample],
               suffix: str = "") -> None:
        rows = [self.sample(name + suffix, labels, value) for labels, value in samples]
        if rows:
            self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *rows]

    @staticmethod
    def sample(name: str, labels: dict[str, str], value: float) -> str:
        if labels:
            inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
            return f"{name}{{{inner}}} {number(value)}"
        return f"{name} {number(value)}"

    def histogram(self, name: str, help_text: str, series: dict[str, Histogram],
                  label: str) -> None:
        if not series:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for key in sorted(series):
            h = series[key]
            running = 0
            for bound, count in zip(TOOL_BUCKETS, h.counts, strict=True):
                running += count
                self.lines.append(self.sample(f"{name}_bucket", {label: key,
                                                                 "le": number(bound)}, running))
            self.lines.append(self.sample(f"{name}_bucket", {label: key, "le": "+Inf"},
                                          h.total))
            self.lines.append(self.sample(f"{name}_sum", {label: key}, h.sum))
            self.lines.append(self.sample(f"{name}_count", {label: key}, h.total))

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _pools(reg: Registry, out: Exposition) -> None:
    pools = sorted(reg.pools.values(), key=lambda p: p.name)
    defined = [p for p in pools if p.defined or p.broken]
    shown = ["inaccessible" if p.broken and not p.defined else p.state for p in defined]
    out.family("storagefs_pools", "gauge", "Defined storage pools by state.",
               (({"state": s}, sum(1 for x in shown if x == s)) for s in POOL_STATES))
    out.family("storagefs_pool_info", "gauge", "A defined pool: its type and uuid.",
               (({"pool": p.name, "type": getattr(p.definition, "type", ""),
                  "uuid": p.uuid}, 1) for p in defined))
    out.family("storagefs_pool_state", "gauge",
               "1 for the state the pool is in, 0 for the others.",
               (({"pool": p.name, "state": s}, int(s == state))
                for p, state in zip(defined, shown, strict=True) for s in POOL_STATES))
    out.family("storagefs_pool_autostart", "gauge", "1 when the pool starts with storagefs.",
               (({"pool": p.name}, int(p.autostart)) for p in defined))
    active = [p for p in defined if p.active]
    for what, help_text in (("capacity", "Size of the pool's storage."),
                            ("allocation", "Space taken in the pool."),
                            ("available", "Space left for volumes.")):
        out.family(f"storagefs_pool_{what}_bytes", "gauge",
                   f"{help_text} Last known figure (started pools).",
                   (({"pool": p.name}, getattr(p.info, what)) for p in active))
    out.family("storagefs_pool_volumes", "gauge", "Volumes listed in the pool.",
               (({"pool": p.name}, sum(1 for v in p.volumes.values() if not v.pending))
                for p in active))
    # a timestamp, not an age (age = time() - it, in PromQL): the file's bytes change only
    # when something changes, so a reader (tar) sees the size it was told
    wall = time.time() - time.monotonic()
    out.family("storagefs_pool_last_refresh_timestamp_seconds", "gauge",
               "When the pool's figures were last refreshed from its storage (Unix time).",
               (({"pool": p.name}, math.floor(wall + p.refreshed)) for p in active
                if p.refreshed))


def _volumes(reg: Registry, out: Exposition) -> None:
    vols = [(p.name, v) for p in sorted(reg.pools.values(), key=lambda p: p.name)
            if p.active for _, v in sorted(p.volumes.items()) if not v.pending]
    out.family("storagefs_volume_info", "gauge", "A listed volume: its format and type.",
               (({"pool": pn, "volume": v.name, "format": v.info.format, "type": v.info.type},
                 1) for pn, v in vols))
    out.family("storagefs_volume_capacity_bytes", "gauge", "A volume's size as guests see it.",
               (({"pool": pn, "volume": v.name}, v.info.capacity) for pn, v in vols))
    out.family("storagefs_volume_allocation_bytes", "gauge",
               "Space a volume takes in its pool.",
               (({"pool": pn, "volume": v.name}, v.info.allocation) for pn, v in vols))


def _activity(reg: Registry, out: Exposition) -> None:
    events = reg.events
    out.family("storagefs_events_total", "counter",
               "Events since the mount, by object and event: storagefs's operations "
               "(defined, started, created, resized ...) and changes it saw (appeared, "
               "vanished, inaccessible, added, removed).",
               (({"object": k, "event": e}, n) for (k, e), n in sorted(events.counts.items())))
    out.family("storagefs_refusals_total", "counter",
               "Refused operations since the mount, by object, operation and errno.",
               (({"object": k, "operation": op, "errno": code}, n)
                for (k, op, code), n in sorted(reg.rec.refusals.items())))
    out.family("storagefs_background_failures_total", "counter",
               "Failures of storagefs's own background work since the mount (a rescan "
               "after a change it saw, the details of a listing), by object, operation "
               "and errno: no user's operation was refused.",
               (({"object": k, "operation": op, "errno": code}, n)
                for (k, op, code), n in sorted(reg.rec.failures.items())))
    out.family("storagefs_event_readers", "gauge", "Open readers of the events file.",
               [({}, events.handles)])
    out.family("storagefs_events_lost_total", "counter",
               "Events that readers of the events file missed (their buffer was full).",
               [({}, events.lost)])
    out.histogram("storagefs_tool_duration_seconds", "How long host tools ran.",
                  TOOLS.tools, "tool")
    out.family("storagefs_tool_failures_total", "counter",
               "Host tool runs that failed (non-zero exit, time-out, killed).",
               (({"tool": t}, h.failures) for t, h in sorted(TOOLS.tools.items())))


def stamp(reg: Registry) -> tuple:
    """What render's bytes are made of, as a few counters (the pools by identity and
    version, counts of secrets, devices, events, refusals, tool runs): an equal stamp
    gives equal bytes, so a stat of metrics.prom renders nothing while nothing changed."""
    events = reg.events
    return (
        tuple((p, p.version, p.volumes.gen, p.volumes_touched, p.state, p.broken,
               p.autostart, p.refreshed) for p in reg.pools.values()),
        sum(1 for s in reg.secrets.values() if s.definition is not None),
        -1 if reg.devices is None else len(reg.devices),
        sum(events.counts.values()), events.handles, events.lost,
        sum(reg.rec.refusals.values()), sum(reg.rec.failures.values()),
        sum(h.total for h in TOOLS.tools.values()),
    )


def render(reg: Registry) -> bytes:
    """The exposition of ``reg`` now (cache only)."""
    out = Exposition()
    out.family("storagefs_info", "gauge", "The storagefs serving this tree.",
               [({"version": __version__}, 1)])
    out.family("storagefs_start_time_seconds", "gauge", "When the mount started (Unix time).",
               [({}, round(reg.started_ns / 1e9, 3))])
    _pools(reg, out)
    _volumes(reg, out)
    out.family("storagefs_secrets", "gauge", "Defined secrets.",
               [({}, sum(1 for s in reg.secrets.values() if s.definition is not None))])
    if reg.devices is not None:
        out.family("storagefs_devices", "gauge", "Host devices in devices/.",
                   [({}, len(reg.devices))])
    _activity(reg, out)
    return out.text()


def pool_counts(reg: Registry) -> dict[str, int]:
    """Pools by state (for systemd's STATUS=)."""
    counts = dict.fromkeys(POOL_STATES, 0)
    for p in reg.pools.values():
        if p.defined:
            counts[p.state] += 1
        elif p.broken:
            counts["inaccessible"] += 1
    return counts


def status_line(reg: Registry) -> str:
    counts = pool_counts(reg)
    total = sum(counts.values())
    states = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    vols = sum(len(p.volumes) for p in reg.pools.values() if p.active)
    return f"{total} pools ({states}), {vols} volumes"
