"""What the ``zfs`` and ``zpool`` tools print, parsed (no tool is run here).

- ``zfs get -Hp -o name,property,value PROPS NAME``: one ``name<TAB>property<TAB>value``
  line per property (exact bytes with ``-p``; ``-`` where a property does not apply).
  ``zfs list -p`` would do too on OpenZFS, but zfs-fuse's ``list`` has no ``-p``: ``get``
  is the one form both print exact numbers with.
- ``zpool import`` and ``zpool status``: blocks that begin with ``pool: NAME``, with
  ``key: value`` lines (``id``, ``state``, ``action`` ...) and a ``config:`` section, a
  tab-indented tree of vdevs (two spaces per level; ``zpool status`` has a ``NAME STATE
  READ WRITE CKSUM`` header line). The leaves of that tree are the pool's devices.
- Error text: the useful lines of stderr as one line, and the errno they mean.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field

#: vdev states zpool prints after a vdev's name
VDEV_STATES = ("ONLINE", "DEGRADED", "FAULTED", "OFFLINE", "UNAVAIL", "REMOVED", "AVAIL",
               "INUSE", "SPLIT", "SUSPENDED", "CORRUPTED")
#: names of vdevs that group others (never a device) and of the sections of a config
_GROUP = re.compile(r"(mirror|raidz[123]?|draid[123]?(:\S*)?|replacing|spare|logs|cache|"
                    r"spares|special|dedup)(-\d+)?")
_CONFIG_LINE = re.compile(r"\t(?P<indent> *)(?P<name>\S(?:.*?\S)??)(?:\s+(?P<state>"
                          + "|".join(VDEV_STATES) + r")\b.*)?$")
_KEY_LINE = re.compile(r" *(?P<key>[a-z]+): ?(?P<value>.*)$")

#: lines zfs and zpool print on stderr that are never the reason of a failure
_NOISE = ("Defaulting to 4K blocksize",)
#: (lower-case) words of zfs's and zpool's reasons -> errno, checked in this order
ERRNOS: tuple[tuple[str, int], ...] = (
    # no daemon (zfs-fuse) or no kernel module (OpenZFS): never "no such pool"
    ("failed to initialize zfs library", errno.EIO),
    ("modules are not loaded", errno.EIO),
    ("function not implemented", errno.ENOTSUP),
    ("operation not supported", errno.ENOTSUP),
    ("permission denied", errno.EACCES),
    ("already exists", errno.EEXIST),
    ("more recent snapshots", errno.EBUSY),
    ("dependent clones", errno.EBUSY),
    ("has children", errno.EBUSY),
    ("busy", errno.EBUSY),
    ("in use", errno.EBUSY),
    ("part of active pool", errno.EBUSY),
    ("part of exported pool", errno.EBUSY),
    ("part of potentially active pool", errno.EBUSY),
    ("may be in use from other system", errno.EBUSY),
    ("out of space", errno.ENOSPC),
    ("no space", errno.ENOSPC),
    ("less than current used", errno.ENOSPC),
    ("not enough space", errno.ENOSPC),
    ("too small", errno.ENOSPC),
    ("does not exist", errno.ENOENT),
    ("no such pool", errno.ENOENT),
    ("no such device", errno.ENOENT),
    ("no such file", errno.ENOENT),
    ("could not find any snapshots", errno.ENOENT),
    ("no pools available", errno.ENOENT),
    ("cannot be imported", errno.EIO),
    ("invalid", errno.EINVAL),
    ("bad property", errno.EINVAL),
    ("must be", errno.EINVAL),
)


@dataclass
class Dataset:
    """One dataset (filesystem, volume or snapshot) as ``zfs get`` printed it."""

    name: str
    props: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.props.get("type", "")

    def number(self, prop: str) -> int:
        """An exact number; 0 for '-', 'none' or a value that is not a number."""
        value = self.props.get(prop, "")
        return int(value) if value.isdigit() else 0

    @property
    def parent(self) -> str:
        """The dataset a snapshot belongs to, or the one above a dataset ('' at the top)."""
        if "@" in self.name:
            return self.name.split("@", 1)[0]
        return self.name.rpartition("/")[0]

    @property
    def basename(self) -> str:
        if "@" in self.name:
            return self.name.split("@", 1)[1]
        return self.name.rpartition("/")[2]


def parse_get(text: str) -> dict[str, Dataset]:
    """``zfs get -Hp -o name,property,value``: datasets by name, in the order printed.
    A value may hold tabs (a mountpoint): only the first two split the line; lines end
    at newlines only (not at the other characters str.splitlines() takes)."""
    found: dict[str, Dataset] = {}
    for line in text.split("\n"):
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[0] or not parts[1]:
            continue
        name, prop, value = parts
        found.setdefault(name, Dataset(name)).props[prop] = value
    return found


def format_get(datasets: list[Dataset]) -> str:
    """The inverse of parse_get (what zfs prints), for tests and fixtures."""
    return "".join(f"{d.name}\t{k}\t{v}\n" for d in datasets for k, v in d.props.items())


@dataclass
class ZpoolEntry:
    """One pool of ``zpool import`` (importable) or ``zpool status`` (imported)."""

    name: str
    id: str = ""
    state: str = ""
    action: str = ""
    #: the leaves of its vdev tree (data, log, cache and spare devices), as printed
    devices: list[str] = field(default_factory=list)

    @property
    def importable(self) -> bool:
        """``zpool import`` says it can be imported (perhaps only with -f)."""
        action = " ".join(self.action.split()).lower()
        return "can be imported" in action and "cannot be imported" not in action


def parse_pools(text: str) -> list[ZpoolEntry]:
    """The pools of a ``zpool import`` or ``zpool status`` listing."""
    pools: list[ZpoolEntry] = []
    current: ZpoolEntry | None = None
    key = ""
    tree: list[tuple[int, str]] = []

    def finish() -> None:
        if current is not None:
            current.devices = _leaves(tree)

    for line in text.splitlines():
        if line.startswith("\t") and key == "config":
            m = _CONFIG_LINE.match(line)
            if m and line.split()[:2] != ["NAME", "STATE"]:
                tree.append((len(m.group("indent")), m.group("name")))
            continue
        if line.startswith("\t") and current is not None and key == "action":
            current.action += " " + line.strip()
            continue
        m = _KEY_LINE.match(line)
        if not m:
            continue
        key, value = m.group("key"), m.group("value").strip()
        if key == "pool":
            finish()
            current = ZpoolEntry(value)
            pools.append(current)
            tree = []
        elif current is not None and key in ("id", "state", "action"):
            setattr(current, key, value)
    finish()
    return pools


def _leaves(tree: list[tuple[int, str]]) -> list[str]:
    """Devices of a vdev tree: entries below the pool's own line that group nothing."""
    if not tree:
        return []
    top = tree[0][0]
    out = []
    for i, (level, name) in enumerate(tree[1:], start=1):
        if level <= top:
            continue  # a second top line (a pool name repeated): not a device
        deeper = i + 1 < len(tree) and tree[i + 1][0] > level
        if not deeper and not _GROUP.fullmatch(name):
            out.append(name)
    return out


def reason(stderr: str, stdout: str = "") -> str:
    """The useful lines of a failure as one line (zfs says why over several lines:
    "invalid vdev specification / use '-f' to override ... / DEV is part of ...")."""
    for text in (stderr, stdout):
        lines = [ln.strip().rstrip(":") for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
        if lines:
            joined = "; ".join(lines[:6])
            # zfs-fuse says "internal error: Function not implemented" for a zvol: the
            # words after it are the reason (storagefs's log keeps "internal error" for
            # its own faults)
            return joined.replace("internal error: ", "")
    return ""


def errno_for(text: str, default: int = errno.EIO) -> int:
    low = text.lower()
    for needle, code in ERRNOS:
        if needle in low:
            return code
    return default
