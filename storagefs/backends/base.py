"""The interface every pool type implements: libvirt's virStorageBackend, typed and
storage-neutral.

One backend instance serves one pool definition, through a PoolContext: its storage
calls (``self.io``: a worker thread of the pool's own with a time limit, so that storage
that hangs holds up only this pool) and its secrets (CHAP passwords, cephx keys resolved
by uuid or usage). Methods raise only :class:`~storagefs.errors.StorageError`; one that
creates something removes its own partial result when it fails.

Point by point against libvirt's ``struct _virStorageBackend``
(src/storage/storage_backend.h)::

    libvirt                 storagefs                     missing op
    type                    type                          -
    findPoolSources         find_sources (classmethod)    no sources offered
    checkPool               check                         "not started"
    startPool               start                         no-op (libvirt: no-op)
    buildPool               build(overwrite)              ENOTSUP
    buildPoolFrom           -                             (no use in libvirt either)
    refreshPool             refresh (required)            -
    stopPool                stop                          no-op (libvirt: no-op)
    deletePool              delete                        ENOTSUP
    buildVol / createVol    create_volume                 ENOTSUP
    buildVolFrom            clone_volume                  ENOTSUP
    refreshVol              probe_volume, volume_details  cheap / slow halves
    deleteVol               delete_volume                 ENOTSUP
    resizeVol               resize_volume                 ENOTSUP
    wipeVol                 wipe_volume                   ENOTSUP
    uploadVol/downloadVol   - (guests and tools use the volume's path or URL)
    -                       update_volume                 config.xml of a volume
    -                       snapshot_volume               internal snapshots
    -                       pool_info                     figures, refreshed in the
                                                          background (never on a read)
    -                       policy (VolumePolicy)         what used to be if-chains in
                                                          the manager: formats, wipe
                                                          algorithms, snapshots, listing

libvirt's driver checks each op for NULL at every call site; here the base class
answers: ENOTSUP for what changes storage, a no-op for start/stop (as libvirt treats a
missing startPool/stopPool), and ``supports(op)`` tells ``control`` what to offer.

Volumes may have a local path (a file or a device node: the ``path`` link), a URL
(iscsi://, gluster://, rbd:) or both; file metadata is optional (``VolumeInfo.file``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import NotFound, NotSupported, StorageError
from ..parsing import WIPE_ALGORITHMS

if TYPE_CHECKING:
    from ..core.runner import PoolRunner
    from ..xml.pool import PoolDef

T = TypeVar("T")


@dataclass
class PoolInfo:
    capacity: int = 0
    allocation: int = 0
    available: int = 0
    #: the target directory's (mode, uid, gid), for status.xml's <permissions>
    target_perms: tuple[int, int, int] | None = None


@dataclass(slots=True)
class FileStat:
    """Owner, mode and times of a volume that is a file or a device node."""

    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                   st.st_ctime_ns)


#: VolumeInfo.options key of a clone's source from another pool: its qemu URL (rbd:)
QEMU_SOURCE = "qemu-source"
#: the options of a volume that has none (shared: a volume's own are a new mapping)
NO_OPTIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class VolumeInfo:
    """What the storage says about one volume (refreshed by operations and events)."""

    name: str
    #: the local node (file or device), when there is one
    path: str | None
    key: str
    format: str = "raw"
    type: str = "file"
    capacity: int = 0
    allocation: int = 0
    physical: int = 0
    #: how a guest reaches it over the network (iscsi://, gluster://, rbd:POOL/IMAGE)
    url: str | None = None
    #: what status.xml's <target><path> shows for a volume with no local path, where
    #: libvirt prints a name of its own (iscsi-direct: 'ip-HOST:PORT-iscsi-IQN-lun-N')
    shown_path: str | None = None
    #: owner, mode and times where it is a file or a node
    file: FileStat | None = None
    backing_path: str | None = None
    backing_format: str | None = None
    #: other files qemu opens with the image: a qcow2 external data file, the extents
    #: of a vmdk descriptor (part of the chain that SPEC's "Never trust guest bytes" checks)
    data_files: Sequence[str] = ()
    encrypted: bool = False
    #: snapshots (fileops.Snapshot: qcow2 internal ones, or the engine's)
    snapshots: Sequence[Any] = ()
    #: qcow2 creation options qemu-img reports (compat, lazy_refcounts), encryption
    options: Mapping[str, str] = field(default_factory=lambda: NO_OPTIONS)


@dataclass
class VolumeSpec:
    """What a volume should be: from a volume XML or the pool's defaults."""

    name: str
    format: str = "raw"
    capacity: int = 0
    allocation: int | None = None
    #: the document's <volume type=...> (None: not said): a zfs pool makes a dataset
    #: for 'dir' and a zvol for 'block'
    type: str | None = None
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


@dataclass(frozen=True)
class VolumePolicy:
    """What volumes of a pool type can be, declared by the backend (no if-chains on
    pool types in the core)."""

    #: formats a volume can be made in ("" none: the engine fixes it, e.g. raw for LVs)
    formats: tuple[str, ...] = ()
    default_format: str = "raw"
    #: a name's suffix implies a format (disk1.qcow2)
    suffixes: Mapping[str, str] = field(default_factory=dict)
    wipe_algorithms: tuple[str, ...] = ()
    #: volume format -> kinds of snapshots ("internal": qcow2's; "engine": zfs, rbd)
    snapshots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: space is really taken when a volume is made (partitions, LVs, LUNs): without a
    #: default capacity in the pool XML, mkdir makes a pending volume its document creates
    takes_space: bool = False
    #: volumes are entries of watch_dir() (inotify); else, with a poll_interval, they
    #: are listed again that often while someone reads the pool (remote storage); with
    #: neither, only a refresh lists them (local block pools)
    watchable: bool = False
    poll_interval: float | None = None
    #: refresh() already says all volume_details() would (snapshots included): a
    #: refresh is not followed by a details call per volume
    listing_has_details: bool = False

    def format_for_name(self, name: str) -> str | None:
        return self.suffixes.get(os.path.splitext(name)[1].lower())

    def snapshots_for(self, fmt: str) -> tuple[str, ...]:
        return self.snapshots.get(fmt, self.snapshots.get("*", ()))


class PoolContext:
    """What a backend may use beyond its definition: the pool's runner (storage calls
    with time limits) and the secret store (values by uuid or usage)."""

    #: the secret usage type each <auth type> names (libvirt's virSecretUsageType)
    AUTH_USAGE: ClassVar[dict[str, str]] = {"chap": "iscsi", "ceph": "ceph"}

    def __init__(self, runner: PoolRunner | None = None, secrets: Any = None,
                 host: str = "", run_dir: str | None = None) -> None:
        self.runner = runner
        self.secrets = secrets
        #: who this storagefs is among hosts sharing storage (``mount --host-id``): named
        #: in the locks it takes, and by another host refused by one of them
        self.host = host or socket.gethostname()
        #: where a backend keeps what exists only while storagefs runs (STATE/run: the
        #: private mounts of gluster pools); None: the backend's own default
        self.run_dir = run_dir

    def auth_uuid(self, auth) -> str:
        """The uuid of the secret a pool's ``<auth>`` names (by uuid or usage); ENOENT
        when secrets/ holds none, EACCES when it has no value yet."""
        if self.secrets is None:
            raise NotFound("no secrets are available to this pool")
        secret = self.secrets.resolve(auth.secret, self.AUTH_USAGE.get(auth.type, auth.type))
        if secret.value is None:
            raise StorageError(f"secret {secret.uuid} named by the pool's <auth> has no "
                               "value yet: write it to secrets/UUID/value", errno.EACCES)
        return secret.uuid

    def auth_value(self, auth) -> bytes:
        """The password or key itself, for a library call that takes it (never put it
        on a command line, in an environment a tool logs, or in a log)."""
        return self.secrets.secret(self.auth_uuid(auth)).value

    def auth_file(self, auth):
        """``async with ctx.auth_file(auth) as path``: the value in a 0600 file that
        exists only while the block runs (rbd --keyfile, qemu --object secret,file=)."""
        return self.secrets.value_file(self.auth_uuid(auth))


FILE_SUFFIXES = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vdi": "vdi", ".vhd": "vpc",
                 ".raw": "raw", ".img": "raw", ".qed": "qed"}
FILE_POLICY = VolumePolicy(
    formats=("raw", "qcow", "qcow2", "qed", "vmdk", "vdi", "vpc"),
    suffixes=FILE_SUFFIXES,
    wipe_algorithms=tuple(a for a in WIPE_ALGORITHMS if a != "trim"),
    snapshots={"qcow2": ("internal",)},
    watchable=True)


class PoolBackend:
    type: ClassVar[str] = ""
    policy: ClassVar[VolumePolicy] = VolumePolicy()
    #: its <source><device>s are its own: no other pool that claims devices may use them
    claims_devices: ClassVar[bool] = False
    #: delete_volume(info, purge_snapshots=True) removes the volume's snapshots first
    purges_snapshots: ClassVar[bool] = False
    #: clone_volume makes a copy-on-write clone when spec.options["linked"] == "yes"
    linked_clones: ClassVar[bool] = False

    def __init__(self, definition: PoolDef, ctx: PoolContext | None = None) -> None:
        self.definition = definition
        self.ctx = ctx or PoolContext()

    # ---- the context ---------------------------------------------------------------
    async def io(self, fn: Callable[..., T], *args: Any, what: str = "",
                 timeout: float | None = None) -> T:
        """fn(*args) on the pool's storage: in a worker thread of the pool's own, within
        the storage time limit (EIO and the pool marked when it hangs)."""
        runner = self.ctx.runner
        if runner is None:  # no pool yet (a definition being checked): a plain call
            return fn(*args)
        return await runner.io(fn, *args, what=what, timeout=timeout)

    @classmethod
    def source_key(cls, definition: PoolDef) -> tuple | None:
        """What a remote source is, for libvirt's source conflicts: two pools whose keys
        are equal use the same storage (None: nothing to compare)."""
        return None

    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """Pool documents (XML) of storage that could become a pool of this type
        (virsh find-storage-pool-sources), shown in sources/TYPE/ (core/sources.py).

        Each is a complete pool document, ready for ``pools/NAME/config.xml``: its
        ``<name>`` is the pool name it proposes (unique among one call's documents;
        the core renames one whose name a defined pool has) and it has no ``<uuid>``.
        ``query`` is None for the background listing of a local type (one whose pool
        type names no host: fs, disk, logical, zfs), else the line written to
        sources/TYPE/query: a host (``HOST[:PORT]``) for remote types, whatever the
        backend documents for local ones. Runs in the trio thread (host tools through
        hostcmd) within a time limit; refuses with StorageError (its reason goes to
        sources/TYPE/error). Which defined pools already use the storage is the core's
        question: it leaves those documents out."""
        return []

    def supports(self, op: str) -> bool:
        """True when this backend overrides ``op`` (so ``control`` lists it)."""
        mine = getattr(type(self), op, None)
        return mine is not None and mine is not getattr(PoolBackend, op, None)

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{what} is not supported for pools of type '{self.type}'")

    # ---- pool operations --------------------------------------------------------------
    async def check(self) -> bool:
        """Is the pool's storage available and started (used after a restart)?"""
        return False

    async def build(self, overwrite: bool = False) -> None:
        raise self._unsupported("build")

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def delete(self) -> None:
        raise self._unsupported("delete")

    async def refresh(self, formats: Mapping[str, str] | None = None,
                      ) -> tuple[PoolInfo, list[VolumeInfo]]:
        """The pool's sizes and volumes. ``formats``: the recorded format of the volumes
        storagefs made or was told about, used instead of what their bytes say."""
        raise NotImplementedError

    async def pool_info(self) -> PoolInfo | None:
        """Current sizes (statvfs, an engine's report), or None if unknown. Called in
        the background, never for a read; raises when the storage is gone."""
        return None

    @contextlib.asynccontextmanager
    async def qemu_source(self, info: VolumeInfo) -> AsyncIterator[str | None]:
        """What qemu-img reads a volume of this pool as, for a copy into another pool:
        a network volume's URL (rbd: with a keyring file that exists only meanwhile),
        or None (a local path is info.path)."""
        yield None

    async def volume_allocations(self) -> dict[str, int] | None:
        """Volumes' allocations that only a pool-wide call tells (rbd du), with the
        figures, in the background (never on a read): name -> bytes, or None."""
        return None

    async def target_perms(self) -> tuple[int, int, int] | None:
        """(mode, uid, gid) of the target directory, for status.xml (None: none)."""
        return None

    async def check_storage(self) -> None:
        """Raise (StorageLost) when the running pool's storage is not the storage it
        started with; a cheap check, for an operation that reads another pool's volume
        (a clone) before it touches this pool's own storage."""
        return None

    def degraded_reason(self) -> str | None:
        """Why the running pool is degraded (None: it is not)."""
        return None

    def watch_dir(self) -> str | None:
        """A directory whose entries are the volumes, watched with inotify."""
        return None

    # ---- volume operations ------------------------------------------------------------
    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        """Look at one volume after an event; None when it is not (or no longer) there.
        ``fmt``: its recorded format (else the backend probes it)."""
        return None

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        """Add what is slow to learn (a host tool's report) to a refreshed volume."""
        return info

    async def unchanged(self, info: VolumeInfo) -> bool:
        """True when a cheap check shows the volume is as ``info`` describes it."""
        return False

    async def signature(self, info: VolumeInfo) -> list[int] | None:
        """What changes whenever anything writes to the volume (a fresh look, one
        syscall), or None where that cannot be told: such volumes are never pristine."""
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
                          report: Callable[[float], None],
                          secret_file: str | None = None) -> VolumeInfo:
        """``secret_file``: the passphrase of an encrypted volume (a 0600 file while
        the call runs), given only when the volume is encrypted and its document names
        a secret; a volume re-made empty keeps its encryption with it."""
        raise self._unsupported("wiping volumes")

    def volume_lock(self, info: VolumeInfo, op: str) -> contextlib.AbstractAsyncContextManager:
        """``async with backend.volume_lock(info, op)`` around every operation that reads
        and then changes a volume (resize, wipe, snapshot, clone from it, delete): a lock
        that storagefs on other hosts sharing this storage respect (an RBD lock, a POSIX
        lock on a shared filesystem), refused with EBUSY naming the host that holds it.
        Storage only this host sees needs none (the volume's claim is enough)."""
        return contextlib.nullcontext()

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str,
                              secret_file: str | None = None) -> VolumeInfo:
        """op: 'create', 'revert' or 'delete' a snapshot; ``secret_file`` as for
        wipe_volume (qemu opens an encrypted image only with its key)."""
        raise self._unsupported("snapshots")
