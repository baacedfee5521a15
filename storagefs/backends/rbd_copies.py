"""The copies of an rbd pool (rbd.py's RbdBackend has them from this mixin): a deep copy
inside the cluster (``rbd cp``), a linked clone (snapshot + protect + ``rbd clone``),
copies from and to other pool types through ``qemu-img convert -n`` with ``rbd:`` URLs
(the cephx key in a keyring file that exists only while the tool runs), and wipe.
Every new image is made under a hidden name and renamed into place: no host lists a
half-made copy."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import secrets

import trio

from .. import hostcmd
from ..errors import Exists, NotSupported, StorageError
from .base import VolumeInfo, VolumeSpec
from .rbdtool import LONG_TIMEOUT, Connection, keyring

#: prefix of the hidden name a clone is made under before its rename
HIDDEN = ".storagefs-"
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class RbdCopies:
    """Mixin of RbdBackend: uses its conn(), _rbd(), _spec(), _must_probe(),
    check_volume_name() and pool."""

    def _same_cluster(self, src: VolumeInfo) -> bool:
        """An RBD image (url POOL/IMAGE, no local node): copied inside the cluster."""
        url = src.url or ""
        return src.type == "network" and src.path is None and url.count("/") == 1 and \
            "://" not in url and ":" not in url

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        self.check_volume_name(spec.name)
        if spec.format not in ("raw", ""):
            raise NotSupported(f"RBD images are raw; cannot clone into format "
                               f"'{spec.format}'")
        hidden = f"{HIDDEN}{secrets.token_hex(4)}-{spec.name}"
        conn = self.conn()
        if spec.options.get("linked") == "yes":
            return await self._linked_clone(src, spec, hidden, report)
        try:
            if self._same_cluster(src):
                # a full copy of the image's data (not its snapshots), in the cluster
                await self._copy(conn, ["cp", src.url, self._spec(hidden)], report)
            elif src.path:
                await self._rbd("create", self._spec(hidden), "--size", f"{src.capacity}B",
                                what=f"failed to create volume '{self._spec(spec.name)}'")
                await self._convert(conn, src, hidden, report)
            else:
                raise NotSupported(f"cannot copy '{src.name}' into an rbd pool (no path)")
            await self._rbd("rename", self._spec(hidden), self._spec(spec.name),
                            what=f"failed to create volume '{self._spec(spec.name)}'")
        except BaseException as exc:
            with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self._rbd("rm", "--no-progress", self._spec(hidden),
                                what="remove the partial copy")
            if isinstance(exc, StorageError) and exc.errno == errno.EEXIST:
                raise Exists(exc.reason) from None
            raise
        return await self._must_probe(spec.name)

    async def _linked_clone(self, src: VolumeInfo, spec: VolumeSpec, hidden: str,
                            report) -> VolumeInfo:
        """``clone NEW --linked``: snapshot ``clone-NEW`` of the source, protected, and
        ``rbd clone`` of it (copy-on-write: the clone shares the source's objects),
        made under a hidden name and renamed into place. The snapshot stays protected
        while the clone lives (the source's delete refuses, with the reason)."""
        if not self._same_cluster(src) or not src.url.startswith(f"{self.pool}/"):
            raise NotSupported("a linked clone is made from an image of the same pool")
        snap = f"{src.url}@clone-{spec.name}"
        made = protected = False
        try:
            await self._rbd("snap", "create", "--no-progress", snap,
                            what=f"failed to snapshot '{src.url}' for a linked clone")
            made = True
            await self._rbd("snap", "protect", snap, what=f"failed to protect '{snap}'")
            protected = True
            await self._rbd("clone", snap, self._spec(hidden),
                            what=f"failed to clone '{snap}'")
            await self._rbd("rename", self._spec(hidden), self._spec(spec.name),
                            what=f"failed to create volume '{self._spec(spec.name)}'")
        except BaseException as exc:
            undo = [("rm", "--no-progress", self._spec(hidden))]
            if protected:
                undo.append(("snap", "unprotect", snap))
            if made:
                undo.append(("snap", "rm", "--no-progress", snap))
            with trio.CancelScope(shield=True):
                for argv in undo:  # each step on its own: one that fails stops none
                    with contextlib.suppress(StorageError):
                        await self._rbd(*argv, what="undo a partial linked clone")
            if isinstance(exc, StorageError) and exc.errno == errno.EEXIST:
                raise Exists(exc.reason) from None
            raise
        report(1.0)
        return await self._must_probe(spec.name)

    @contextlib.asynccontextmanager
    async def qemu_source(self, info: VolumeInfo):
        conn = self.conn()
        async with keyring(conn) as kr:
            yield conn.qemu_url(info.name, kr)

    async def _copy(self, conn: Connection, argv: list[str], report) -> None:
        """An rbd copy whose "Image deep copy: 12% complete..." feeds progress."""
        pat = re.compile(rb"(\d+)% complete")
        async with keyring(conn) as kr:
            limit = hostcmd.limit(LONG_TIMEOUT)
            try:
                await hostcmd.run_progress(["rbd", *conn.args(kr, limit), *argv], pat,
                                           report, timeout=limit)
            except StorageError as exc:
                raise StorageError(f"failed to copy the image: {exc.reason}",
                                   exc.errno) from None

    async def _convert(self, conn: Connection, src: VolumeInfo, image: str, report) -> None:
        async with keyring(conn) as kr:
            fmt = src.format if src.format != "luks" else "raw"
            argv = ["qemu-img", "convert", "-p", "-n", "-f", fmt, "-O", "raw", src.path,
                    conn.qemu_url(image, kr)]
            await hostcmd.run_progress(argv, _PROGRESS, report, timeout=LONG_TIMEOUT)

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        conn = self.conn()
        async with keyring(conn) as kr:
            url = conn.qemu_url(info.name, kr)
            if algorithm == "trim":
                await hostcmd.run(["qemu-io", "-f", "raw", "-c",
                                   f"discard 0 {info.capacity}", url],
                                  timeout=LONG_TIMEOUT)
            else:  # zeros written over every byte (-S 0: no zero detection)
                src = json.dumps({"driver": "raw", "file": {
                    "driver": "null-co", "size": info.capacity, "read-zeroes": True}})
                await hostcmd.run_progress(
                    ["qemu-img", "convert", "-p", "-n", "-S", "0", "-O", "raw",
                     f"json:{src}", url], _PROGRESS, report, timeout=LONG_TIMEOUT)
        report(1.0)
        return await self._must_probe(info.name)
