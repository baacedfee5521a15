"""``netfs`` pools: an export of a network filesystem mounted on the target (libvirt's
storage_backend_fs.c, netfs part). Volumes are files, as in ``dir``, on storage other
hosts share (sharedfiles.py: atomic create, volume locks, polled listing).

mount(8) is called as libvirt 9.0 calls it (virStorageBackendFileSystemMountCmd in
storage_util.c): libvirt's default options first, then the type's own, then those of
``<fs:mount_opts>``::

    glusterfs  mount -o nodev,nosuid,noexec,direct-io-mode=1[,OPTS] -t glusterfs HOST:DIR TARGET
    nfs        mount -o nodev,nosuid,noexec[,OPTS][,nfsvers=VER] -t nfs HOST:DIR TARGET
    cifs       mount -o nodev,nosuid,noexec,guest[,OPTS] -t cifs //HOST/DIR TARGET
    auto       mount -o nodev,nosuid,noexec[,OPTS][,nfsvers=VER] HOST:DIR TARGET

``<protocol ver='4'/>`` becomes ``nfsvers=4``, so NFSv4-only servers work. Three changes
from libvirt: ``auto`` gets no ``-t auto`` (libvirt passes it, and mount(8) then tries
only the local filesystem types of /proc/filesystems, never nfs or cifs; without ``-t``
mount(8) picks nfs for HOST:DIR and cifs for //HOST/SHARE); an IPv6 address is put in
brackets (``[fd00::1]:/export``); a CIFS share is ``//HOST/share`` whether or not the
document's dir starts with '/' (libvirt makes ``//HOST//share``).

``stop`` refuses with EBUSY naming the processes that hold files on the mount before
umount is tried (mounted.py). A mount whose client died ("Transport endpoint is not
connected") is mounted again by ``refresh`` or ``start``: storagefs made that mount.
Discovery (``find_sources``): the exports ``showmount`` lists and the volumes
``gluster volume info`` shows on a host, as ready pool documents.
"""

from __future__ import annotations

import errno
import logging
import os
import re

from .. import hostcmd
from ..errors import InvalidArgument, NotFound, NotSupported, StorageError
from ..xml.pool import PoolDef, PoolSource, SourceHost, format_pool
from . import blockdev, glustercli
from .base import PoolInfo, VolumeInfo
from .mounted import UMOUNT, MountedBackend
from .sharedfiles import SharedFiles

log = logging.getLogger(__name__)

#: libvirt's default mount options on Linux (VIR_STORAGE_BACKEND_FS_DEFAULT_MOUNT_OPTS)
DEFAULT_OPTIONS = ("nodev", "nosuid", "noexec")
#: the option each format adds (libvirt), before <fs:mount_opts>
FORMAT_OPTIONS = {"glusterfs": ("direct-io-mode=1",), "cifs": ("guest",)}
#: what /proc/self/mountinfo calls a mount of each format
KERNEL_TYPES = {"glusterfs": ("fuse.glusterfs",), "nfs": ("nfs", "nfs4"),
                "cifs": ("cifs", "smb3")}
SHOWMOUNT = "showmount"
#: discovered netfs sources get a target here (the document can be changed before use)
SOURCES_TARGET_ROOT = "/mnt"
#: errnos of a mount whose server or client went away
DEAD_MOUNT = (errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.EHOSTDOWN)


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def mount_source(defn: PoolDef) -> str:
    """What mount(8) is given as the source: HOST:DIR, or //HOST/SHARE for cifs."""
    src = defn.source
    if len(src.hosts) != 1:
        raise InvalidArgument("expected exactly 1 host for the storage pool")
    if not src.dir:
        raise InvalidArgument("missing source path")
    host = src.hosts[0].name
    if (src.format or "auto") == "cifs":
        return f"//{host}/{src.dir.lstrip('/')}"
    return f"{_host_part(host)}:{src.dir}"


def mount_argv(defn: PoolDef, target: str, extra: tuple[str, ...] = ()) -> list[str]:
    """mount(8)'s command line for a netfs pool, options in libvirt 9.0's order
    (virStorageBackendFileSystemMountAddOptions): its defaults, the format's own
    (direct-io-mode=1, guest), ``extra``, <fs:mount_opts>, then nfsvers=; storagefs adds
    '--' before the operands (mount(8) takes it; a source is never an option)."""
    fmt = defn.source.format or "auto"
    opts = [*DEFAULT_OPTIONS, *FORMAT_OPTIONS.get(fmt, ()), *extra, *defn.mount_opts]
    if defn.source.protocol_ver and fmt in ("nfs", "auto"):
        opts.append(f"nfsvers={defn.source.protocol_ver}")
    argv = ["mount", "-o", ",".join(opts)]
    if fmt != "auto":
        argv += ["-t", fmt]
    return [*argv, "--", mount_source(defn), target]


def parse_showmount(text: str) -> list[str]:
    """Export paths from ``showmount --no-headers --exports HOST`` (``/a dir  *``: the
    path may hold spaces, the last field is the client list), as libvirt parses it."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(/(?:.*\S)?) +\S+$", line)
        if m:
            out.append(m.group(1))
    return out


def source_name(wanted: str, taken: set[str]) -> str:
    """A valid pool name from ``wanted`` (an export's last component, a volume name),
    unique among ``taken`` (which it joins)."""
    name = re.sub(r"[/\x00-\x1f\x7f]", "_", wanted).lstrip(".") or "export"
    name = name.encode()[:200].decode(errors="ignore")
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def source_document(pool_type: str, name: str, host: str, *, dir: str,
                    fmt: str | None = None, volume: str | None = None) -> str:
    """A pool document for a discovered source (libvirt's XML, as config.xml takes it)."""
    src = PoolSource(hosts=[SourceHost(host)], dir=dir, format=fmt, name=volume)
    target = os.path.join(SOURCES_TARGET_ROOT, name) if pool_type == "netfs" else None
    return format_pool(PoolDef(type=pool_type, name=name, source=src, target_path=target),
                       extensions=False)


def check_query(query: str | None, pool_type: str) -> str:
    host = (query or "").strip()
    if not host or any(c.isspace() or c in "/\\'\"<>&" for c in host):
        raise InvalidArgument(f"hostname must be specified for {pool_type} sources")
    return host


async def nfs_exports(host: str) -> list[str]:
    res = await hostcmd.run([SHOWMOUNT, "--no-headers", "--exports", "--", host], timeout=30)
    return parse_showmount(res.stdout)


class NetfsBackend(SharedFiles, MountedBackend):
    type = "netfs"
    default_options = DEFAULT_OPTIONS
    #: storagefs unmounted the mount as dead and has not mounted it again yet
    _dropped = False

    # ---- what is mounted -------------------------------------------------------------
    @property
    def net_format(self) -> str:
        return self.definition.source.format or "auto"

    def mount_source(self) -> str:
        return mount_source(self.definition)

    def mount_type(self) -> str:
        return self.net_format

    def mount_argv(self, target: str) -> list[str]:
        return mount_argv(self.definition, target)

    def is_ours(self, entry: blockdev.MountEntry) -> bool:
        kinds = KERNEL_TYPES.get(self.net_format) or tuple(t for ts in KERNEL_TYPES.values()
                                                         for t in ts)
        return entry.fstype in kinds and \
            entry.source.rstrip("/") == self.mount_source().rstrip("/")

    async def check_source(self) -> None:
        """glusterfs: ask the host's glusterd first (mount.glusterfs only says "Mounting
        glusterfs on T failed"): a volume that does not exist is ENOENT, one not started
        EBUSY. A host whose glusterd cannot be asked is left to mount(8)."""
        if self.net_format != "glusterfs":
            return
        host = self.definition.source.hosts[0].name
        volume = (self.definition.source.dir or "").strip("/").split("/")[0]
        try:
            await glustercli.require_started(host, volume, timeout=15)
        except StorageError as exc:
            if exc.errno in (errno.ENOENT, errno.EBUSY):
                raise
            log.info("pool %s: gluster cannot ask %s (%s): mounting anyway",
                     self.definition.name, host, exc.reason)

    @classmethod
    def source_key(cls, definition: PoolDef) -> tuple | None:
        """libvirt's netfs source conflict: the same host and directory."""
        src = definition.source
        if not src.hosts or not src.dir:
            return None
        return ("netfs", src.hosts[0].name.lower(), os.path.normpath(src.dir))

    # ---- a mount whose client died ------------------------------------------------------
    async def mount_is_dead(self) -> bool:
        """Our source is mounted there but answers ENOTCONN (its FUSE client died) or the
        like (a hung one makes this fail with the time limit's EIO instead)."""
        if not self.mounted():
            return False
        try:
            await self.io(os.statvfs, self.real_target(), what=f"statvfs {self.target}")
        except OSError as exc:
            return exc.errno in DEAD_MOUNT
        return False

    async def remount(self) -> None:
        """Unmount our dead mount lazily and mount the source again."""
        log.warning("pool %s: the mount on %s is dead: mounting it again",
                    self.definition.name, self.target)
        await hostcmd.run([UMOUNT, "-l", self.real_target()], timeout=60)
        self._dropped = True  # a later refresh mounts it, if this mount fails
        await self.mount_again()

    async def mount_again(self) -> None:
        await MountedBackend.start(self)
        self._dropped = False

    def should_mount_again(self) -> bool:
        """Not mounted, and storagefs unmounted it itself (a dead mount it dropped)."""
        return self._dropped and not self.mounted()

    async def start(self) -> None:
        if await self.mount_is_dead():
            await self.remount()
            return
        await super().start()

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        """As dir; a mount whose client died, or that storagefs dropped as dead, is
        mounted again (the pool recovers on refresh when the server is back)."""
        if self.should_mount_again():
            await self.mount_again()
            return await super().refresh(formats)
        try:
            return await super().refresh(formats)
        except StorageError as exc:
            if exc.errno not in DEAD_MOUNT or not await self.mount_is_dead():
                raise
            lost = exc
        try:
            await self.remount()
        except StorageError as exc:
            raise StorageError(f"{lost.reason}; mounting it again failed: {exc.reason}",
                               lost.errno) from None
        return await super().refresh(formats)

    # ---- discovery ----------------------------------------------------------------------
    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """NFS exports (showmount) and Gluster volumes of the host ``query``; an error
        when neither answers (libvirt: "no storage pools were found on host")."""
        host = check_query(query, "netfs")
        taken: set[str] = set()
        docs, reasons = [], []
        try:
            for path in await nfs_exports(host):
                name = source_name(os.path.basename(path.rstrip("/")) or "root", taken)
                docs.append(source_document("netfs", name, host, dir=path, fmt="nfs"))
        except StorageError as exc:
            reasons.append(exc.reason)
        try:
            for vol in await glustercli.volume_info(host):
                name = source_name(vol.name, taken)
                docs.append(source_document("netfs", name, host, dir=f"/{vol.name}",
                                            fmt="glusterfs"))
        except StorageError as exc:
            reasons.append(exc.reason)
        if not docs and len(reasons) == 2:
            code = errno.ENOTSUP if all("not installed" in r for r in reasons) else \
                errno.EHOSTUNREACH
            raise StorageError(f"no storage pools were found on host '{host}' "
                               f"({'; '.join(reasons)})", code)
        return docs


__all__ = ["NetfsBackend", "NotFound", "NotSupported", "mount_argv", "mount_source",
           "parse_showmount", "source_document", "source_name"]
