"""One backend per pool type, looked up by the type in the pool XML. A new pool type is
one module here and one line in BACKENDS."""

from __future__ import annotations

from ..errors import NotSupported
from .base import PoolBackend, PoolContext, PoolInfo, VolumeInfo, VolumePolicy, VolumeSpec
from .dir import DirBackend
from .disk import DiskBackend
from .fs import FsBackend
from .gluster import GlusterBackend
from .iscsi import IscsiBackend
from .iscsi_direct import IscsiDirectBackend
from .logical import LogicalBackend
from .netfs import NetfsBackend
from .rbd import RbdBackend
from .zfs import ZfsBackend

BACKENDS: dict[str, type[PoolBackend]] = {
    DirBackend.type: DirBackend,
    FsBackend.type: FsBackend,
    DiskBackend.type: DiskBackend,
    LogicalBackend.type: LogicalBackend,
    IscsiBackend.type: IscsiBackend,
    IscsiDirectBackend.type: IscsiDirectBackend,
    ZfsBackend.type: ZfsBackend,
    NetfsBackend.type: NetfsBackend,
    GlusterBackend.type: GlusterBackend,
    RbdBackend.type: RbdBackend,
}


def backend_class(pool_type: str) -> type[PoolBackend]:
    cls = BACKENDS.get(pool_type)
    if cls is None:
        raise NotSupported(f"pool type '{pool_type}' is not supported yet "
                           f"(supported: {', '.join(sorted(BACKENDS))})")
    return cls


def backend_for(definition, ctx: PoolContext | None = None) -> PoolBackend:
    return backend_class(definition.type)(definition, ctx)


__all__ = ["BACKENDS", "PoolBackend", "PoolContext", "PoolInfo", "VolumeInfo", "VolumePolicy",
           "VolumeSpec", "backend_class", "backend_for"]
