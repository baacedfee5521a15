"""The interface every pool type implements (libvirt's virStorageBackend, typed).

One backend instance serves one pool definition. Only :meth:`refresh` is
required; every other operation raises ENOTSUP from this base class, and
:meth:`supports` tells the tree which commands ``control`` offers.
Methods raise only :class:`~storagefs.errors.StorageError`; a method that
creates something removes its own partial result when it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..errors import NotSupported

if TYPE_CHECKING:
    from ..xml.pool import PoolDef


@dataclass
class PoolInfo:
    capacity: int = 0
    allocation: int = 0
    available: int = 0


@dataclass
class VolumeInfo:
    """What the storage says about one volume (refreshed by operations and events)."""

    name: str
    path: str
    key: str
    format: str = "raw"
    type: str = "file"
    capacity: int = 0
    allocation: int = 0
    physical: int = 0
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    backing_path: str | None = None
    backing_format: str | None = None
    #: other files qemu opens with the image: a qcow2 external data file, the extents
    #: of a vmdk descriptor (part of the chain that SPEC's "Never trust guest bytes" checks)
    data_files: list[str] = field(default_factory=list)
    encrypted: bool = False
    #: qcow2 internal snapshots (fileops.Snapshot), from qemu-img info
    snapshots: list = field(default_factory=list)
    #: qcow2 creation options qemu-img reports (compat, lazy_refcounts)
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class VolumeSpec:
    """What a volume should be: from a volume XML or the pool's defaults."""

    name: str
    format: str = "raw"
    capacity: int = 0
    allocation: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    backing_path: str | None = None
    backing_format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    #: "luks" to encrypt; the passphrase is in ``secret_file`` while the operation runs
    encryption: str | None = None
    secret_file: str | None = None
    #: qemu's LUKS options from <cipher>/<ivgen> (cipher-alg, cipher-mode, hash-alg ...)
    encrypt_options: dict[str, str] = field(default_factory=dict)
    #: update_volume: the volume never held data, so re-make it to match in full
    #: (smaller capacity, another format, encryption) instead of changing it in place
    remake: bool = False


POOL_OPS = ("build", "start", "stop", "delete", "refresh")
VOLUME_OPS = ("create_volume", "delete_volume", "resize_volume", "update_volume")


class PoolBackend:
    type: ClassVar[str] = ""
    #: space is really taken when a volume is made (partitions, LVs): without a default
    #: capacity in the pool XML, mkdir makes a pending volume that its document creates
    takes_space: ClassVar[bool] = False

    def __init__(self, definition: PoolDef) -> None:
        self.definition = definition

    def supports(self, op: str) -> bool:
        """True when this backend overrides ``op`` (so ``control`` lists it)."""
        mine = getattr(type(self), op, None)
        return mine is not None and mine is not getattr(PoolBackend, op, None)

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{what} is not supported for pools of type '{self.type}'")

    # pool operations
    async def check(self) -> bool:
        """Is the pool's storage available and started (used after a restart)?"""
        return False

    async def build(self, overwrite: bool = False) -> None:
        raise self._unsupported("build")

    async def start(self) -> None:
        raise self._unsupported("start")

    async def stop(self) -> None:
        raise self._unsupported("stop")

    async def delete(self) -> None:
        raise self._unsupported("delete")

    async def refresh(self, formats: Mapping[str, str] | None = None,
                      ) -> tuple[PoolInfo, list[VolumeInfo]]:
        """The pool's sizes and volumes. ``formats``: the recorded format of the volumes
        storagefs made or was told about, used instead of what their bytes say."""
        raise NotImplementedError

    def pool_info(self) -> PoolInfo | None:
        """Current sizes from cheap syscalls only (statvfs), or None if unknown."""
        return None

    def watch_dir(self) -> str | None:
        """A directory whose entries are the volumes, watched with inotify."""
        return None

    # volume operations
    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        """Look at one volume after an event; None when it is not (or no longer) there.
        ``fmt``: its recorded format (else the backend probes it)."""
        return None

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        """Add what is slow to learn (a host tool's report) to a refreshed volume."""
        return info

    def unchanged(self, info: VolumeInfo) -> bool:
        """True when a cheap check shows the volume is as ``info`` describes it."""
        return False

    def stat_volume(self, info: VolumeInfo) -> VolumeInfo | None:
        """Refresh fast-changing figures with syscalls only; None if the volume vanished."""
        return info

    def signature(self, info: VolumeInfo) -> list[int] | None:
        """What changes whenever anything writes to the volume (cheap syscalls only), or
        None where that cannot be told: such volumes are never taken as pristine."""
        return None

    def check_volume_name(self, name: str) -> None:
        """Refuse (EINVAL) a name this pool type can never give a volume (cheap checks
        only, no host tool): a pending volume is refused at mkdir, not at its document."""
        return None

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        raise self._unsupported("creating volumes")

    async def delete_volume(self, info: VolumeInfo) -> None:
        raise self._unsupported("deleting volumes")

    async def resize_volume(self, info: VolumeInfo, capacity: int, *,
                            shrink: bool = False, allocate: bool = False,
                            secret_file: str | None = None) -> VolumeInfo:
        raise self._unsupported("resizing volumes")

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Make an existing volume match ``spec`` (format, allocation, permissions)."""
        raise self._unsupported("changing volumes")

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec,
                           report: Callable[[float], None]) -> VolumeInfo:
        """Make ``spec.name`` in this pool a copy of ``src`` (which may be in another pool).
        The new volume appears only when complete; a failure leaves nothing behind."""
        raise self._unsupported("cloning volumes")

    async def wipe_volume(self, info: VolumeInfo, algorithm: str,
                          report: Callable[[float], None]) -> VolumeInfo:
        raise self._unsupported("wiping volumes")

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        """op: 'create', 'revert' or 'delete' an internal snapshot."""
        raise self._unsupported("internal snapshots")
