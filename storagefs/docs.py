"""Documents storagefs generates: live pool and volume XML from definitions and figures."""

from __future__ import annotations

import dataclasses
import os
import stat

from .backends.base import PoolInfo, VolumeInfo
from .xml.common import Permissions
from .xml.pool import PoolDef, format_pool


def pool_status(defn: PoolDef, uuid: str, info: PoolInfo) -> bytes:
    """``virsh pool-dumpxml``: uuid, sizes and the target's real permissions."""
    perms = defn.target_permissions
    if defn.target_path:
        try:
            st = os.stat(defn.target_path)
            perms = Permissions(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                perms.label if perms else None)
        except OSError:
            pass
    shown = dataclasses.replace(defn, uuid=uuid, target_permissions=perms)
    return format_pool(shown, capacity=info.capacity, allocation=info.allocation,
                       available=info.available, extensions=False).encode()


def volume_doc(defn: PoolDef, info: VolumeInfo, *, live: bool) -> bytes:
    """A volume's XML: the definition (live=False) or ``virsh vol-dumpxml`` (live=True)."""
    from .xml import volume as xv

    perms = Permissions(info.mode, info.uid, info.gid)
    ts = None
    if live:
        ts = xv.Timestamps(atime=_ts(info.atime_ns), mtime=_ts(info.mtime_ns),
                           ctime=_ts(info.ctime_ns), btime="0")
    backing = None
    if info.backing_path:
        backing = xv.BackingStore(path=info.backing_path, format=info.backing_format)
    vol = xv.VolumeDef(
        name=info.name, type=info.type, key=info.key if live else None,
        capacity=info.capacity, allocation=info.allocation if live else 0,
        physical=info.physical if live else None,
        target=xv.VolTarget(path=info.path if live else None, format=info.format,
                            permissions=perms, timestamps=ts),
        backing=backing)
    return xv.format_volume(vol, defn).encode()


def _ts(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
