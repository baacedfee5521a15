"""ZFS pools that could become storagefs pools (``find_sources`` of the zfs type): the
pools imported now (``zpool status``) and those ``zpool import`` finds (in ``query``, a
directory of devices or vdev files, else where zpool looks by default), each as a pool
document ready for ``config.xml``.

A document's ``<name>`` is the ZFS pool's name where that is a valid storagefs pool name
not taken by an earlier document (two importable pools may share a name: the second gets
``-ID``); its ``<source><name>`` is always the ZFS pool's own. Devices are the leaves of
the pool's vdev tree, as absolute paths (zpool prints /dev devices by their short name).
"""

from __future__ import annotations

import errno
import os

from ..errors import InvalidArgument, StorageError
from ..names import check_name
from ..xml.pool import PoolDef, format_pool
from ..xml.poolsource import PoolSource, SourceDevice
from .zfs_output import ZpoolEntry, parse_pools, reason
from .zfs_tool import ZPOOL, zrun

#: where zpool finds a device it names by its short name
DEVICE_DIRS = ("/dev", "/dev/disk/by-id", "/dev/disk/by-path", "/dev/disk/by-vdev",
               "/dev/disk/by-partuuid", "/dev/disk/by-uuid", "/dev/mapper")
RESERVED = ("by-uuid", "by-path")


def device_path(name: str) -> str:
    """An absolute path for a vdev as zpool printed it."""
    if name.startswith("/"):
        return name
    for d in DEVICE_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return os.path.join("/dev", name)


def document_name(entry: ZpoolEntry, taken: set[str]) -> str:
    """A valid pool name for the document, unique among those made so far."""
    for name in (entry.name, f"{entry.name}-{entry.id}" if entry.id else "",
                 f"zfs-{entry.id or len(taken)}"):
        if not name or name in taken or name in RESERVED:
            continue
        try:
            check_name(name, "pool name")
        except StorageError:
            continue
        return name
    n = len(taken)
    while f"zfs-{n}" in taken:
        n += 1
    return f"zfs-{n}"


def pool_document(entry: ZpoolEntry, name: str) -> str:
    defn = PoolDef(type="zfs", name=name, target_path=f"/dev/zvol/{entry.name}",
                   source=PoolSource(name=entry.name,
                                     devices=[SourceDevice(device_path(d))
                                              for d in entry.devices]))
    return format_pool(defn, extensions=False)


async def listing(argv: list[str]) -> list[ZpoolEntry]:
    res = await zrun(argv, check=False, what=" ".join(argv))
    if res.returncode == 0:
        return parse_pools(res.stdout)
    why = reason(res.stderr, res.stdout)
    if not why or "no pools available" in why:
        return []  # zfs-fuse's zpool import says nothing (exit 1) when it finds none
    raise StorageError(f"{' '.join(argv)}: {why}", errno.EIO)


async def find_sources(query: str | None = None) -> list[str]:
    argv = [ZPOOL, "import"]
    if query:
        if not query.startswith("/") or not os.path.isdir(query):
            raise InvalidArgument(f"'{query}' is not a directory to look for ZFS devices in")
        argv += ["-d", query]
    found = await listing([ZPOOL, "status"])
    found += [p for p in await listing(argv) if p.importable]
    docs, taken = [], set()
    for entry in found:
        name = document_name(entry, taken)
        taken.add(name)
        docs.append(pool_document(entry, name))
    return docs
