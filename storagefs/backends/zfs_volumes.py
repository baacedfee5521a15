"""The volumes of a zfs pool: which datasets they are, what zfs says of them, and the
operations on them (a part of ZfsBackend, in zfs.py).

- zvols (``type='block'``, node ``/dev/zvol/DATASET``) at any depth below the source,
  named by their last component as libvirt lists them; file system datasets right below
  the source (``type='dir'``, path = their mountpoint while mounted), which libvirt does
  not list. A name taken already (two zvols of one name in two datasets) keeps the
  shallower one. Key: the dataset's name.
- capacity: a zvol's volsize; a dataset's refquota, else referenced + available (what
  it can hold). allocation: ``used`` (with snapshots); libvirt shows a zvol's
  refreservation, which says 0 for a sparse zvol full of data.
- snapshots: ``DATASET@NAME``; revert is ``zfs rollback`` without ``-r``, so it is
  refused while later snapshots exist (a revert never destroys anything); an rmdir of a
  volume destroys its snapshots (``zfs destroy -r``) but never other datasets below it
  or clones of its snapshots (that would need ``-R``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time

import trio

from ..errors import Busy, InvalidArgument, NotFound, NotSupported, StorageError
from ..names import check_name
from . import blockdev
from .base import VolumeInfo, VolumeSpec
from .fileops import Snapshot
from .zfs_output import Dataset, parse_get
from .zfs_tool import CHANGE_TIMEOUT, ZFS, Volmode, create_argv, zrun, zrun_patient

log = logging.getLogger(__name__)

#: what one listing asks zfs for
PROPS = ("type", "used", "available", "referenced", "volsize", "volblocksize",
         "refreservation", "refquota", "mountpoint", "mounted", "guid", "creation")
#: characters of a ZFS name component (dataset or snapshot)
COMPONENT = re.compile(r"[A-Za-z0-9_.:-]+")
MAX_DATASET_NAME = 255
ZVOL_DIR = "/dev/zvol"


def snapshot_of(ds: Dataset) -> Snapshot:
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ds.number("creation")))
    return Snapshot(name=ds.basename, id=ds.props.get("guid", ""), date=date,
                    vm_state_size=0, vm_clock="0")


def volume_of(ds: Dataset, snapshots: list[Snapshot]) -> VolumeInfo:
    options = {"refreservation": str(ds.number("refreservation"))}
    if ds.type == "volume":
        size = ds.number("volsize")
        options["volblocksize"] = str(ds.number("volblocksize") or 8192)
        info = VolumeInfo(name=ds.basename, path=f"{ZVOL_DIR}/{ds.name}", key=ds.name,
                          format="raw", type="block", capacity=size,
                          allocation=ds.number("used"), physical=size, options=options)
        blockdev.stat_node(info, info.path)
    else:
        mountpoint = ds.props.get("mountpoint", "")
        mounted = ds.props.get("mounted") == "yes" and mountpoint.startswith("/")
        capacity = ds.number("refquota") or ds.number("referenced") + ds.number("available")
        info = VolumeInfo(name=ds.basename, path=mountpoint if mounted else None,
                          key=ds.name, format="dir", type="dir", capacity=capacity,
                          allocation=ds.number("used"), options=options)
    info.snapshots = snapshots
    return info


def volumes_of(found: dict[str, Dataset], source: str, pool: str = "") -> list[VolumeInfo]:
    """The volumes among the datasets of a ``zfs get -r`` of ``source``."""
    snapshots: dict[str, list[Snapshot]] = {}
    for ds in found.values():
        if ds.type == "snapshot":
            with contextlib.suppress(StorageError):  # a name no directory can have
                check_name(ds.basename, "snapshot name")
                snapshots.setdefault(ds.parent, []).append(snapshot_of(ds))
    prefix = source + "/"
    candidates = []
    for ds in found.values():
        if not ds.name.startswith(prefix) or "@" in ds.name:
            continue
        depth = ds.name[len(prefix):].count("/") + 1
        if ds.type == "volume" or (ds.type == "filesystem" and depth == 1):
            candidates.append((depth, ds.name, ds))
    out, taken = [], set()
    for _depth, _name, ds in sorted(candidates, key=lambda c: c[:2]):
        try:
            check_name(ds.basename, "volume name")
        except StorageError:
            continue
        if ds.basename in taken:
            log.info("pool %s: %s is not listed: volume name '%s' is taken", pool, ds.name,
                     ds.basename)
            continue
        taken.add(ds.basename)
        out.append(volume_of(ds, snapshots.get(ds.name, [])))
    return out


def rounded(info: VolumeInfo, capacity: int) -> int:
    """A zvol's volsize is a multiple of its volblocksize."""
    if info.type != "block":
        return capacity
    block = int(info.options.get("volblocksize") or 8192) or 8192
    return -(-capacity // block) * block


class ZfsVolumes:
    """Volume operations of ZfsBackend (which gives ``source``, ``io`` and ``definition``)."""

    source: str

    async def _get(self, names: list[str], props=PROPS, *, flags=("-r",),
                   what: str = "") -> dict[str, Dataset]:
        res = await zrun([ZFS, "get", "-Hp", *flags, "-o", "name,property,value",
                          ",".join(props), *names], what=what or f"zfs get {names[0]}")
        return parse_get(res.stdout)

    async def _probe(self, ds: str) -> VolumeInfo | None:
        """One volume (and its snapshots) as zfs says it is now; None when it is gone."""
        try:
            found = await self._get([ds], flags=("-r", "-d", "1"))
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if ds not in found:
            return None
        snaps = [snapshot_of(d) for d in found.values()
                 if d.type == "snapshot" and d.parent == ds]
        return volume_of(found[ds], snaps)

    async def _current(self, info: VolumeInfo) -> VolumeInfo:
        found = await self._probe(self._dataset_of(info))
        if found is None:
            raise NotFound(f"volume '{info.key}' is gone")
        return found

    def _dataset_of(self, info: VolumeInfo) -> str:
        if not info.key.startswith(self.source + "/"):
            raise InvalidArgument(f"volume '{info.name}' ({info.key}) is not a dataset of "
                                  f"'{self.source}'")
        return info.key

    def check_volume_name(self, name: str) -> None:
        if not COMPONENT.fullmatch(name):
            raise InvalidArgument(f"volume name '{name}' cannot be a ZFS dataset name: use "
                                  "letters, digits and _ . : - only")
        if len(f"{self.source}/{name}".encode()) > MAX_DATASET_NAME:
            raise InvalidArgument(f"dataset name '{self.source}/{name}' is over "
                                  f"{MAX_DATASET_NAME} bytes")

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        self.check_volume_name(spec.name)
        if spec.encryption:
            raise NotSupported("storage pool does not support encrypted volumes")
        if spec.backing_path:
            raise NotSupported("zfs volumes have no backing store (a ZFS clone is made "
                               "from a snapshot)")
        ds = f"{self.source}/{spec.name}"
        volmode = spec.type != "dir" and await Volmode.needed()
        argv = create_argv(spec.type, ds, spec.capacity, spec.allocation, volmode)
        kind = "dataset" if spec.type == "dir" else "zvol"
        try:
            await zrun(argv, what=f"cannot create {kind} '{ds}'", timeout=CHANGE_TIMEOUT)
        except StorageError as exc:
            if kind == "zvol" and exc.errno == errno.ENOTSUP:
                raise NotSupported(f"{exc.reason}: this ZFS cannot make zvols (zfs-fuse has "
                                   "none); it can make a dataset, <volume type='dir'>") \
                    from None
            raise
        try:
            info = await self._probe(ds)
            if info is None:
                raise StorageError(f"cannot find newly created volume '{ds}'", errno.EIO)
            await self._set_perms(info, spec)
            return info
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await zrun([ZFS, "destroy", "-r", ds], what=f"cannot destroy '{ds}'")
            raise

    async def _set_perms(self, info: VolumeInfo, spec: VolumeSpec) -> None:
        """<permissions> of a document: mode and owner of a dataset's mountpoint or a
        zvol's node (where they exist), in the pool's thread with its time limit."""
        if (spec.mode is None and spec.uid is None and spec.gid is None) or not info.path:
            return

        def apply(path: str) -> None:
            if spec.uid is not None or spec.gid is not None:
                os.chown(path, -1 if spec.uid is None else spec.uid,
                         -1 if spec.gid is None else spec.gid)
            if spec.mode is not None:
                os.chmod(path, spec.mode)

        try:
            await self.io(apply, info.path, what=f"chmod {info.path}")
        except FileNotFoundError:
            return  # a zvol without a node (no zvol device on this kernel)
        except OSError as exc:
            raise StorageError(f"cannot set permissions of '{info.path}': {exc.strerror}",
                               exc.errno or errno.EIO) from None
        if info.type == "block":
            blockdev.stat_node(info, info.path)

    async def delete_volume(self, info: VolumeInfo) -> None:
        ds = self._dataset_of(info)
        try:
            found = await self._get([ds], ("type",), what=f"cannot destroy '{ds}'")
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        children = [n for n, d in found.items() if n != ds and d.type != "snapshot"]
        if children:
            raise Busy(f"cannot destroy '{ds}': it holds the datasets "
                       f"{', '.join(children[:5])}; destroy them first")
        try:  # -r: its snapshots go with it (never dependent clones: that needs -R)
            await zrun_patient([ZFS, "destroy", "-r", ds], what=f"cannot destroy '{ds}'")
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise

    async def resize_volume(self, info: VolumeInfo, capacity: int, *, shrink: bool = False,
                            allocate: bool = False, **_ignored) -> VolumeInfo:
        ds = self._dataset_of(info)
        current = await self._current(info)
        size = rounded(current, capacity)
        if size <= 0:
            raise InvalidArgument("a zfs volume needs a capacity above 0")
        if size < current.capacity and not shrink:
            raise InvalidArgument("Can't shrink capacity below current capacity unless "
                                  "shrink flag explicitly specified")
        prop = "volsize" if current.type == "block" else "refquota"
        if size != current.capacity:
            await zrun([ZFS, "set", f"{prop}={size}", ds], what=f"cannot resize '{ds}'",
                       timeout=CHANGE_TIMEOUT)
        if allocate:
            await zrun([ZFS, "set", f"refreservation={size}", ds],
                       what=f"cannot reserve {size} bytes for '{ds}'", timeout=CHANGE_TIMEOUT)
        return await self._probe(ds) or current

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """A document for a volume that exists: it may grow it, reserve space (a larger
        <allocation>) and set <permissions>; its type never changes."""
        ds = self._dataset_of(info)
        if spec.type is not None and spec.type != info.type:
            what = "a dataset" if info.type == "dir" else "a zvol"
            raise InvalidArgument(f"volume '{info.name}' is type '{info.type}' ({what}): its "
                                  f"type cannot change to '{spec.type}'")
        if spec.encryption:
            raise NotSupported("storage pool does not support encrypted volumes")
        wanted = rounded(info, spec.capacity) if spec.capacity else info.capacity
        if wanted < info.capacity:
            raise InvalidArgument(f"capacity {spec.capacity} is below the current "
                                  f"{info.capacity}; shrinking needs 'resize --shrink'")
        if wanted > info.capacity:
            info = await self.resize_volume(info, spec.capacity)
        reserved = int(info.options.get("refreservation") or 0)
        if spec.allocation and spec.allocation > reserved:
            await zrun([ZFS, "set", f"refreservation={spec.allocation}", ds],
                       what=f"cannot reserve {spec.allocation} bytes for '{ds}'",
                       timeout=CHANGE_TIMEOUT)
            info = await self._probe(ds) or info
        await self._set_perms(info, spec)
        return info

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        """A fresh look (its snapshots now), before a snapshot operation."""
        return await self._current(info)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        ds = self._dataset_of(info)
        if not COMPONENT.fullmatch(name):
            raise InvalidArgument(f"snapshot name '{name}' cannot be a ZFS snapshot name: use "
                                  "letters, digits and _ . : - only")
        snap = f"{ds}@{name}"
        if len(snap.encode()) > MAX_DATASET_NAME:
            raise InvalidArgument(f"snapshot name '{snap}' is over {MAX_DATASET_NAME} bytes")
        argv = {"create": [ZFS, "snapshot", snap], "revert": [ZFS, "rollback", snap],
                "delete": [ZFS, "destroy", snap]}[op]
        what = {"create": "cannot create snapshot", "revert": "cannot roll back to",
                "delete": "cannot destroy snapshot"}[op] + f" '{snap}'"
        try:
            if op == "delete":
                await zrun_patient(argv, what=what)
            else:
                await zrun(argv, what=what, timeout=CHANGE_TIMEOUT)
        except StorageError as exc:
            if op == "revert" and "more recent snapshots" in exc.reason:
                later = [s for s in re.findall(re.escape(ds) + r"@[A-Za-z0-9_.:-]+",
                                               exc.reason) if s != snap]
                raise Busy(f"cannot roll back '{ds}' to '{name}': later snapshots exist "
                           f"({', '.join(later)}); a revert never destroys them: "
                           "delete-snapshot them first") from None
            raise
        return await self._probe(ds) or info
