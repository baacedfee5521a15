"""Volumes that are files in a directory other hosts use at the same time (an export
mounted by ``netfs``, a Gluster volume of ``gluster``): what differs from ``dir``.

- **Atomic create.** A new volume (mkdir, create, clone) is made complete under a temp
  name of this host's own, then given its name with link(2), which the server does
  atomically and refuses with EEXIST when the name exists (the NFS-safe form of O_EXCL
  that open(2) describes). Of two hosts creating one name exactly one wins, the other
  gets EEXIST, and no host lists a half-made volume (temp names start with a dot).
- **Temp names carry the host id** (``mount --host-id``): a storagefs that starts again
  removes its own leftovers, never another host's work in progress; a wipe's temp file
  (made under the volume's lock) is removed only when that lock is free.
- **Volume locks** (sharedlock.py) around what reads and then changes a volume: the
  core takes them for resize, wipe, snapshots, clone and delete; this takes one for a
  config.xml that changes the volume.
- **Polled listing**: other hosts' changes send no inotify event here, so these pools
  are listed again every POLL_INTERVAL while someone reads them. A listing reads the
  directory and stats each file; it reads the header only of files new or changed since
  the last listing (stat signature), so polling a thousand images costs a thousand
  lstat calls, not a thousand opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Mapping

import trio

from .. import hostcmd
from ..errors import Exists, StorageError, from_oserror
from ..names import check_name
from . import fileio, imagefmt, sharedlock
from .base import FILE_POLICY, VolumeInfo, VolumeSpec
from .filevol import FileVolumes

log = logging.getLogger(__name__)

#: seconds between two listings of a shared pool while someone reads it (SPEC: at most 2)
POLL_INTERVAL = 1.0
SHARED_FILE_POLICY = dataclasses.replace(FILE_POLICY, watchable=False,
                                         poll_interval=POLL_INTERVAL)
#: a file's stat signature: what changes whenever its header or size can have changed
Signature = tuple[int, int, int, int, int]
ScanCache = dict[str, tuple[Signature, VolumeInfo]]
#: a release of a lock is waited for at most this long (then it completes on its own)
RELEASE_SECONDS = 30.0


def host_tag(host: str) -> str:
    """The host id as it appears in temp file names (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)[:48] or "host"


def _signature(st: os.stat_result) -> Signature:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_blocks


def _copy(info: VolumeInfo) -> VolumeInfo:
    return dataclasses.replace(info, options=dict(info.options), snapshots=list(info.snapshots),
                               data_files=list(info.data_files),
                               file=dataclasses.replace(info.file) if info.file else None)


def scan_cached(directory: str, formats: Mapping[str, str], cache: ScanCache,
                ) -> list[VolumeInfo]:
    """imagefmt.scan, reading headers only of files whose stat changed since the last
    scan (``cache``, updated here)."""
    try:
        with os.scandir(directory) as it:
            names = [e.name for e in it
                     if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
    except OSError as exc:
        raise from_oserror(exc, f"cannot open directory '{directory}'") from None
    found, fresh = [], {}
    for name in names:
        try:
            check_name(name)
        except StorageError:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile (by another host)
        except OSError as exc:
            raise from_oserror(exc, f"cannot stat '{path}'") from None
        if not stat.S_ISREG(st.st_mode):
            continue
        sig, fmt = _signature(st), formats.get(name)
        hit = cache.get(name)
        if hit is not None and hit[0] == sig and fmt in (None, hit[1].format):
            info = _copy(hit[1])
        else:
            info = imagefmt.probe_file(path, name, fmt)
            if info is None:
                continue
        fresh[name] = (sig, _copy(info))
        found.append(info)
    cache.clear()
    cache.update(fresh)
    return found


class SharedFileVolumes(FileVolumes):
    """FileVolumes for a directory that other hosts change at the same time."""

    stage_new = True

    def __init__(self, directory: str, io, host: str, cache: ScanCache | None = None) -> None:
        super().__init__(directory, io)
        self.host = host
        self.tag = host_tag(host)
        self.cache: ScanCache = {} if cache is None else cache

    def temp_name(self, what: str, name: str) -> str:
        tmp = f"{imagefmt.TEMP_PREFIX}{what}-{self.tag}-{name}"
        if len(os.fsencode(tmp)) <= 255:
            return tmp
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()
        return f"{imagefmt.TEMP_PREFIX}{what}-{self.tag}-{digest}"

    async def _qemu_create(self, path: str, spec: VolumeSpec) -> None:
        """A backing store in this pool's directory is named relative to the image
        (qemu resolves it from the image's own place): each host mounts the directory
        at a path of its own (a gluster pool's is in the host's state directory), and a
        guest opens the image by its gluster:// URL, so an absolute path of this host's
        mount would be wrong for everyone else."""
        b = spec.backing_path
        if b and os.path.dirname(os.path.normpath(b)) == os.path.normpath(self.dir):
            spec = dataclasses.replace(spec, backing_path=os.path.basename(b))
        await super()._qemu_create(path, spec)

    @staticmethod
    def place_new(tmp: str, path: str) -> None:
        # first everything written reaches the server: a network client may hold a
        # size change back (GlusterFS's write-behind), and another host that lists the
        # name once it exists would see the file still empty
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create '{path}'") from None
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise Exists(f"storage volume '{os.path.basename(path)}' exists already (made "
                         "meanwhile, by another host or program)") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise from_oserror(exc, f"cannot create '{path}'") from None
            fileio.rename_new(tmp, path)  # no hard links (CIFS): exists-check, then rename
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    def remove_leftovers(self) -> list[str]:
        """This host's own temp files, and wipe temp files whose volume nobody locks."""
        gone = []
        own = tuple(f"{imagefmt.TEMP_PREFIX}{what}-{self.tag}-" for what in ("new", "clone"))
        wipe = f"{imagefmt.TEMP_PREFIX}wipe-"
        try:
            with os.scandir(self.dir) as it:
                entries = [e.name for e in it if e.name.startswith(imagefmt.TEMP_PREFIX)
                           and e.is_file(follow_symlinks=False)]
        except OSError:
            return gone
        for name in entries:
            path = os.path.join(self.dir, name)
            if name.startswith(own):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    gone.append(name)
            elif name.startswith(wipe):
                volume = name[len(wipe):]
                try:
                    fd = sharedlock.acquire(self.dir, volume, self.host, "tidy")
                except StorageError:
                    continue  # a wipe runs on another host: its file is in use
                try:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        gone.append(name)
                finally:
                    sharedlock.release(self.dir, volume, fd)
        if gone:
            log.warning("removed unfinished temp files in %s: %s", self.dir, ", ".join(gone))
        return gone

    async def scan(self, formats: Mapping[str, str]) -> list[VolumeInfo]:
        return await self.io(scan_cached, self.dir, dict(formats), self.cache,
                             what=f"scan {self.dir}")


class SharedFiles:
    """Put before a file backend (MountedBackend) whose directory other hosts share."""

    policy = SHARED_FILE_POLICY

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._scan_cache: ScanCache = {}

    @property
    def files(self) -> SharedFileVolumes:
        return SharedFileVolumes(self.target, self.io, self.ctx.host, self._scan_cache)

    def volume_lock(self, info: VolumeInfo, op: str) -> contextlib.AbstractAsyncContextManager:
        return self.locked(info.name, op)

    @contextlib.asynccontextmanager
    async def locked(self, name: str, op: str) -> AsyncIterator[None]:
        """The volume's cluster-wide lock for the block; EBUSY naming its holder."""
        directory, host = self.target, self.ctx.host
        fd = await self.io(sharedlock.acquire, directory, name, host, op,
                           what=f"lock volume {name}")
        try:
            yield
        finally:
            # let go in a thread of its own, not through the pool's runner: it runs even
            # when the pool is marked stuck, and on storage that hangs it lets go whenever
            # the storage answers (a close must never block the event loop)
            with trio.CancelScope(shield=True), trio.move_on_after(hostcmd.limit(RELEASE_SECONDS)):
                await trio.to_thread.run_sync(sharedlock.release, directory, name, fd,
                                              abandon_on_cancel=True)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        async with self.locked(info.name, "define"):
            return await super().update_volume(info, spec)
