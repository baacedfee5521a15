"""One backend per pool type, looked up by the type in the pool XML."""

from __future__ import annotations

from ..errors import NotSupported
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .dir import DirBackend
from .disk import DiskBackend
from .fs import FsBackend
from .logical import LogicalBackend

BACKENDS: dict[str, type[PoolBackend]] = {
    DirBackend.type: DirBackend,
    FsBackend.type: FsBackend,
    DiskBackend.type: DiskBackend,
    LogicalBackend.type: LogicalBackend,
}


def backend_for(definition) -> PoolBackend:
    cls = BACKENDS.get(definition.type)
    if cls is None:
        raise NotSupported(f"pool type '{definition.type}' is not supported yet "
                           f"(supported: {', '.join(sorted(BACKENDS))})")
    return cls(definition)


__all__ = ["BACKENDS", "PoolBackend", "PoolInfo", "VolumeInfo", "VolumeSpec", "backend_for"]
