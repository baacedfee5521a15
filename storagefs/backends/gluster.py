"""``gluster`` pools: the files of a Gluster volume, used natively (libvirt's
storage_backend_gluster.c): ``<source><host name='H'/><dir path='/'/><name>VOL</name>``.

- **No mount the user manages.** The backend mounts the volume (or its ``<dir>``)
  privately on ``STATE/run/gluster/POOL`` with the GlusterFS FUSE client, as ``netfs``
  would, and unmounts it at stop; the pool has no ``<target>`` (as in libvirt). Before
  that, ``gluster --xml volume info`` on the host says whether the volume exists and is
  started (ENOENT / EBUSY with the reason). gfapi is not used from Python: PyPI's binding
  is old and broken (ENVIRONMENT.md), and every gfapi connection pays glfs_fini's 10 s
  on close (qemu-img on gluster:// shows it).
- **Volumes are network volumes, named as libvirt names them**: target path
  (status.xml) ``gluster://HOST[:PORT]/VOL/DIR/NAME``, the URL a guest (or qemu-img)
  opens, and the same URL as the key (libvirt 9.0 does both). The ``path`` link points
  at the file on the private mount, for local tools while the pool runs.
- **storagefs's own work runs on the private mount** (create, resize, clone, wipe,
  snapshots: the same code and qemu-img calls as ``dir``, in milliseconds). qemu-img
  itself works on the gluster:// URLs here (qemu-block-extra 7.2: create, info, resize;
  measured: create 21 s, resize 10 s, info 10 s, nearly all of it glfs_fini), so a
  mkdir through them would take half a minute. Image files are padded to 512 bytes
  (padded()): qemu's gluster driver fails with EIO on a qcow2 whose file ends
  mid-sector, as qemu-img makes them on a local path.
- **Shared**: other hosts use the same volume, so everything of sharedfiles.py applies
  (atomic create, volume locks, polled listing), as for ``netfs``.
- No build or delete (libvirt's gluster backend has neither: a Gluster volume is made
  with ``gluster volume create`` on its servers); subdirectories of the volume are not
  listed as volumes (libvirt lists them as ``netdir`` volumes).
- ``find_sources(host)``: the volumes ``gluster volume info`` lists on the host.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse

from ..errors import InvalidArgument, StorageError
from ..xml.pool import PoolDef
from . import blockdev, glustercli
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .dir import dir_info, make_parents
from .netfs import DEFAULT_OPTIONS, NetfsBackend, check_query, source_document, source_name

#: where private mounts go when no state directory is known (a definition being checked)
DEFAULT_RUN_DIR = "/run/storagefs"
#: glusterd's port: the CLI (gluster --remote-host) can ask no other
GLUSTERD_PORT = 24007
_URL_SAFE = "/-._~!$&'()*+,;=:@"
#: image files are kept a multiple of this long (qemu's gluster driver: padded())
PAD = 512


class GlusterBackend(NetfsBackend):
    type = "gluster"
    # libvirt's gluster backend builds and deletes nothing: not offered by control
    build = PoolBackend.build
    delete = PoolBackend.delete

    # ---- the definition ---------------------------------------------------------------
    @property
    def volname(self) -> str:
        name = self.definition.source.name or ""
        if not name or "/" in name:
            raise InvalidArgument(f"gluster pool name '{name}' must not contain /")
        return name

    @property
    def subdir(self) -> str:
        """The directory in the volume, with a slash at both ends ('/' for the root)."""
        d = self.definition.source.dir or "/"
        if not d.startswith("/"):
            raise InvalidArgument(f"gluster pool path '{d}' must start with /")
        return d if d.endswith("/") else d + "/"

    @property
    def target(self) -> str:
        """The private mountpoint (the pool has no <target>)."""
        run = getattr(self.ctx, "run_dir", None) or DEFAULT_RUN_DIR
        return os.path.join(run, "gluster", self.definition.name)

    def path_in_volume(self, name: str) -> str:
        """VOL/DIR/NAME, as libvirt joins them (its state->volname, state->dir, name)."""
        return f"{self.volname}{self.subdir}{name}"

    def url_of(self, name: str) -> str:
        host = self.definition.source.hosts[0]
        where = f"[{host.name}]" if ":" in host.name else host.name
        port = f":{host.port}" if host.port else ""
        path = urllib.parse.quote(f"/{self.path_in_volume(name)}", safe=_URL_SAFE)
        return f"gluster://{where}{port}{path}"

    def public(self, info: VolumeInfo | None) -> VolumeInfo | None:
        """A volume as libvirt shows it: network type, and the gluster:// URL as both its
        target path and its key (virStorageBackendGlusterSetMetadata: "the path is
        unique enough to serve as a volume key")."""
        if info is not None:
            url = self.url_of(info.name)
            info.type, info.key, info.url = "network", url, url
        return info

    # ---- what is mounted -----------------------------------------------------------------
    def mount_source(self) -> str:
        host = self.definition.source.hosts[0].name
        where = f"[{host}]" if ":" in host else host
        return f"{where}:/{self.volname}{self.subdir.rstrip('/')}"

    def mount_argv(self, target: str) -> list[str]:
        port = self.definition.source.hosts[0].port
        # no attribute or entry caching in the kernel: other hosts change these files,
        # and a size the kernel cached from a listing (another host's file still being
        # made) must not outlive the change (the private mount is ours: libvirt's
        # gluster backend uses gfapi, no mount, so no mount line to follow). Nor in the
        # client's md-cache: a listing here caches the attributes of another host's temp
        # file while it is empty, and once that host links it to the volume's name this
        # host would see the volume's size as 0 for a second (seen: 10 of 10 tries)
        opts = [*DEFAULT_OPTIONS, "direct-io-mode=1", "attribute-timeout=0",
                "entry-timeout=0", "xlator-option=*md-cache.md-cache-timeout=0",
                f"log-file={target}.log", "log-level=WARNING"]
        if port:
            opts.append(f"server-port={port}")
        return ["mount", "-t", "glusterfs", "-o", ",".join(opts), "--", self.mount_source(),
                target]

    def is_ours(self, entry: blockdev.MountEntry) -> bool:
        return entry.fstype == "fuse.glusterfs" and entry.source == self.mount_source()

    def should_mount_again(self) -> bool:
        """The private mount is ours: whenever it is gone while the pool runs."""
        return not self.mounted()

    def not_mounted_reason(self) -> str:
        return f"Gluster volume '{self.mount_source()}' is not mounted (its private mount " \
            f"on '{self.target}' is gone)"

    async def check_source(self) -> None:
        host = self.definition.source.hosts[0]
        if host.port in (None, GLUSTERD_PORT):
            await glustercli.require_started(host.name, self.volname)

    @classmethod
    def source_key(cls, definition: PoolDef) -> tuple | None:
        """libvirt's gluster source conflict: the same host, volume and directory."""
        src = definition.source
        if not src.hosts or not src.name:
            return None
        return ("gluster", src.hosts[0].name.lower(), src.name,
                os.path.normpath(src.dir or "/"))

    # ---- pool operations -------------------------------------------------------------------
    async def start(self) -> None:
        target = self.target
        await self.io(make_parents, target, 0o700, what=f"mkdir {target}")
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(StorageError):
            await self.io(_rmdir_quietly, self.target, what=f"rmdir {self.target}")

    async def pool_info(self) -> PoolInfo | None:
        """libvirt's figures for gluster: available is the free blocks (f_bfree)."""
        self.require_mounted()
        info = await self.io(dir_info, self.target, what=f"statvfs {self.target}")
        return PoolInfo(info.capacity, info.allocation, info.capacity - info.allocation)

    async def target_perms(self) -> tuple[int, int, int] | None:
        return None

    # ---- volumes: the file on the private mount, shown as libvirt shows it -------------------
    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        info, found = await super().refresh(formats)
        return info, [self.public(v) for v in found]

    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        return self.public(await super().probe_volume(name, fmt))

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        return self.public(await super().volume_details(info))

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        return await self.padded(await super().create_volume(spec))

    async def resize_volume(self, info: VolumeInfo, capacity: int, **kwargs) -> VolumeInfo:
        return await self.padded(await super().resize_volume(info, capacity, **kwargs))

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        return await self.padded(await super().update_volume(info, spec))

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        return await self.padded(await super().clone_volume(src, spec, report))

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        return await self.padded(await super().wipe_volume(info, algorithm, report))

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        return await self.padded(await super().snapshot_volume(info, op, name))

    async def padded(self, info: VolumeInfo) -> VolumeInfo:
        """An image file's length rounded up to 512 bytes. qemu's gluster driver (the
        gluster:// URL a guest opens) fails a read that ends past the end of the file
        with EIO ("Could not read L1 table: Input/output error" for a fresh qcow2 of
        196,616 bytes made by qemu-img on a local path); qemu-img itself pads what it
        creates through gluster://. Zeros after a qcow2's last cluster are harmless."""
        info = self.public(info)
        if info.format != "raw" and info.path:
            size = await self.io(_pad, info.path, PAD, what=f"pad {info.path}")
            if size is not None:
                info.physical = size
        return info

    # ---- discovery ------------------------------------------------------------------------
    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """The host's Gluster volumes, as gluster pools of the volume's root."""
        host = check_query(query, "gluster")
        taken: set[str] = set()
        return [source_document("gluster", source_name(vol.name, taken), host, dir="/",
                                volume=vol.name)
                for vol in await glustercli.volume_info(host)]


def _pad(path: str, unit: int) -> int | None:
    """Extend the file to a multiple of ``unit`` bytes; its new length, None if it was."""
    size = os.stat(path).st_size
    if size % unit == 0:
        return None
    new = size + unit - size % unit
    os.truncate(path, new)
    return new


def _rmdir_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
