"""Volumes that are files in a directory: shared by the dir, fs and netfs backends.

Everything here stays inside the pool's directory: names are checked before they get
here, files are opened with O_NOFOLLOW / O_EXCL, and symlinks or other non-regular
entries in the directory are never listed nor touched. Every syscall on the pool's
files goes through ``io`` (the pool's worker threads, with a time limit); host tools
run as processes with their own limits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from .. import hostcmd
from ..errors import Busy, Exists, InvalidArgument, NotSupported, StorageError, from_oserror
from ..names import check_name
from . import allocation, fileio, fileops, imagefmt
from .base import QEMU_SOURCE, VolumeInfo, VolumeSpec
from .imagefmt import CREATABLE, QEMU_ERRNOS, QEMU_IMG, RESIZABLE, check_creatable, made_format

log = logging.getLogger(__name__)

#: at most this many qemu-img probes at once during a refresh
_probe_limit = trio.CapacityLimiter(4)

IO = Callable[..., Awaitable[Any]]


async def _plain(fn: Callable[..., Any], *args: Any, **_kw: Any) -> Any:
    return fn(*args)


class FileVolumes:
    """Volume operations on regular files in one directory."""

    #: a new volume is made complete under a temp name and only then given its name
    #: (place_new): for a directory other hosts list too (sharedfiles.py)
    stage_new = False

    def __init__(self, directory: str, io: IO = _plain) -> None:
        self.dir = directory
        self.io = io

    def path_of(self, name: str) -> str:
        return os.path.join(self.dir, check_name(name, "volume name"))

    def temp_name(self, what: str, name: str) -> str:
        """The name of our temp file beside volume ``name`` while ``what`` runs."""
        return fileops.temp_name(what, name)

    @staticmethod
    def place_new(tmp: str, path: str) -> None:
        """Give a finished temp file its volume name, never over an existing one
        (a syscall: run through ``io``)."""
        fileio.rename_new(tmp, path)

    def remove_leftovers(self) -> list[str]:
        """Temp files an interrupted storagefs left here (a syscall: run through ``io``)."""
        return imagefmt.remove_leftovers(self.dir)

    # ---- looking -------------------------------------------------------------------
    async def scan(self, formats: Mapping[str, str]) -> list[VolumeInfo]:
        """Every volume of the directory, from headers (one worker thread for all)."""
        return await self.io(imagefmt.scan, self.dir, dict(formats),
                             what=f"scan {self.dir}")

    async def probe(self, name: str, deep: bool = True,
                    fmt: str | None = None) -> VolumeInfo | None:
        """The volume as the storage has it; ``deep`` adds qemu-img's details."""
        path = self.path_of(name)
        info = await self.io(imagefmt.probe_file, path, name, fmt, what=f"stat {path}")
        if info is not None and deep and info.format != "raw":
            await self.details(info)
        return info

    async def details(self, info: VolumeInfo) -> VolumeInfo:
        """What only qemu-img tells: backing store, snapshots, encryption, options.
        Raises when qemu-img fails (the caller records why).

        ``qemu-img info`` opens neither the backing file nor a qcow2 data file, but it
        does open a vmdk's extents: a vmdk whose descriptor names files outside this
        directory is not given to it (its extents are shown as data files)."""
        if info.format == "vmdk":
            def inside() -> tuple[list[str] | None, bool]:
                extents = imagefmt.vmdk_extents(info.path)
                ok = extents is not None and all(
                    imagefmt.holds(self.dir, e) or e == info.path for e in extents)
                return extents, ok

            extents, ok = await self.io(inside, what=f"read {info.path}")
            if not ok:
                info.data_files = extents if extents is not None else [info.path]
                return info
        await self._qemu_info(info, strict=True)
        return info

    async def _qemu_info(self, info: VolumeInfo, strict: bool = False) -> None:
        async with _probe_limit:
            try:
                data = await hostcmd.run_json(
                    [QEMU_IMG, "info", "--output=json", "-U", "-f", info.format, info.path],
                    timeout=30)
            except StorageError:
                if strict:
                    raise
                return  # unreadable image: keep the header probe's answer
        if isinstance(data, dict):
            info.capacity = int(data.get("virtual-size", info.capacity))
            info.backing_path = data.get("full-backing-filename") or data.get("backing-filename")
            info.backing_format = data.get("backing-filename-format")
            info.encrypted = bool(data.get("encrypted"))
            info.snapshots = fileops.snapshots_from_info(data)
            specific = (data.get("format-specific") or {}).get("data") or {}
            info.data_files = imagefmt.external_files(info.path, specific)
            options = dict(info.options)
            if "compat" in specific:
                options["compat"] = str(specific["compat"])
            if specific.get("lazy-refcounts"):
                options["lazy_refcounts"] = "on"
            encrypt = specific.get("encrypt")
            if isinstance(encrypt, dict) and encrypt.get("format"):
                # libvirt's name of qcow2's built-in encryption: aes is 'qcow'
                fmt = str(encrypt["format"])
                options["encryption"] = "qcow" if fmt == "aes" else fmt
            info.options = options

    async def ensure_regular(self, info: VolumeInfo) -> None:
        await self.io(imagefmt.ensure_regular, info, what=f"stat {info.path}")

    async def unchanged(self, info: VolumeInfo) -> bool:
        return await self.io(imagefmt.unchanged, info, what=f"stat {info.path}")

    async def signature(self, info: VolumeInfo) -> list[int] | None:
        return await self.io(imagefmt.signature, info.path, what=f"stat {info.path}")

    async def image_holds_data(self, info: VolumeInfo) -> bool:
        if info.format == "raw":
            return await self.io(imagefmt.holds_data, info.path, what=f"read {info.path}")
        data = await hostcmd.run_json([QEMU_IMG, "map", "--output=json", "-U", "-f",
                                       info.format, info.path], timeout=60)
        return any(isinstance(e, dict) and e.get("data") for e in data or [])

    async def discard(self, path: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.io(imagefmt.discard, path, what=f"unlink {path}")
            except StorageError:
                pass

    # ---- making ----------------------------------------------------------------------
    async def create(self, spec: VolumeSpec, path: str | None = None) -> VolumeInfo:
        """Make the volume at its path (or at ``path``, a temporary name in the pool),
        with the document's mode or 0600 from the start (qemu-img keeps the mode of the
        file it writes into)."""
        check_creatable(spec.format)
        final = self.path_of(spec.name)
        staged = path is None and self.stage_new
        if staged:
            path = os.path.join(self.dir, self.temp_name("new", spec.name))
            await self.discard(path)  # left by an interrupted create of ours
        path = path or final
        mode = spec.mode if spec.mode is not None else 0o600
        if spec.allocation:
            await self.io(allocation.check_free, self.dir, min(spec.allocation, spec.capacity),
                          f"allocating volume '{spec.name}'", what=f"statvfs {self.dir}")
        plain_raw = spec.format == "raw" and not spec.encryption and not spec.options
        await self.io(fileio.create_file, path, mode, spec.uid, spec.gid,
                      spec.capacity if plain_raw else None,
                      spec.allocation if plain_raw else None, what=f"create {path}")
        try:
            if not plain_raw:
                await self._qemu_create(path, spec)
                if spec.allocation and not imagefmt.qemu_preallocates(spec):
                    await self.io(fileio.reserve, path, spec.allocation, what=f"allocate {path}")
            if staged:
                await self.io(self.place_new, path, final, what=f"link {final}")
            elif path != final:
                await self.io(os.replace, path, final, what=f"rename {path}")
            info = await self.probe(spec.name, fmt=made_format(spec))
            if info is None:
                raise StorageError(f"volume '{path}' vanished while being created")
            return info
        except BaseException:
            await self.discard(path)
            raise

    async def _qemu_create(self, path: str, spec: VolumeSpec) -> None:
        fmt = made_format(spec)
        argv = [QEMU_IMG, "create", "-q", "-f", fmt]
        opts = dict(spec.options)
        if spec.encryption:
            if spec.encryption != "luks" or fmt not in ("qcow2", "luks"):
                raise NotSupported(f"encryption '{spec.encryption}' is supported as LUKS in "
                                   "qcow2 or raw volumes only")
            if not spec.secret_file:
                raise InvalidArgument("an encrypted volume needs a secret with a value")
            argv += ["--object", f"secret,id=sec0,file={spec.secret_file}"]
            opts["encrypt.format" if fmt == "qcow2" else "key-secret"] = (
                "luks" if fmt == "qcow2" else "sec0")
            if fmt == "qcow2":
                opts["encrypt.key-secret"] = "sec0"
            prefix = "encrypt." if fmt == "qcow2" else ""
            opts.update({prefix + k: v for k, v in spec.encrypt_options.items()})
        if imagefmt.qemu_preallocates(spec):
            opts.setdefault("preallocation", "falloc")
        if spec.format == "vpc":
            opts.setdefault("force_size", "on")
        if spec.backing_path:
            argv += ["-b", spec.backing_path, "-F", spec.backing_format or "raw"]
        if opts:
            argv += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
        argv += [path, str(spec.capacity)]
        slow = "preallocation" in opts  # writes the whole image
        await fileops.run_create(argv, timeout=3600 if slow else 60)

    async def delete(self, info: VolumeInfo) -> None:
        await self.io(fileio.delete_file, info.path, what=f"unlink {info.path}")

    # ---- changing ----------------------------------------------------------------------
    async def resize(self, info: VolumeInfo, capacity: int, *, shrink: bool,
                     allocate: bool, secret_file: str | None = None) -> VolumeInfo:
        await self.ensure_regular(info)
        if capacity < info.capacity and not shrink:
            raise InvalidArgument("Can't shrink capacity below current capacity unless "
                                  "shrink flag explicitly specified")
        if info.format not in RESIZABLE:
            raise NotSupported(f"format '{info.format}' cannot be resized")
        if info.encrypted and not secret_file:
            raise NotSupported(f"'{info.name}' is encrypted: resizing needs its secret, named "
                               "by <encryption> in the volume's config.xml")
        if allocate and capacity > info.capacity:
            await self.io(allocation.check_free, self.dir, capacity - info.capacity,
                          f"allocating {capacity - info.capacity} more bytes for "
                          f"'{info.name}'", what=f"statvfs {self.dir}")
        if info.format == "raw":
            await self.io(fileio.resize_raw, info.path, capacity, allocate,
                          what=f"resize {info.path}")
        else:
            argv = [QEMU_IMG, "resize", "-q"]
            if shrink and capacity < info.capacity:
                argv.append("--shrink")
            if allocate:
                argv.append("--preallocation=falloc")
            if info.encrypted:
                key = "encrypt.key-secret" if info.format == "qcow2" else "key-secret"
                argv += ["--object", f"secret,id=sec0,file={secret_file}", "--image-opts",
                         fileops.image_opts(info.format, info.path, **{key: "sec0"})]
            else:
                argv += ["-f", info.format, info.path]
            await hostcmd.run([*argv, str(capacity)], timeout=600, errno_map=QEMU_ERRNOS)
        new = await self.probe(info.name, fmt=info.format)
        if new is None:
            raise StorageError(f"volume '{info.path}' vanished")
        return new

    async def update(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Make the file match spec: in full when ``spec.remake`` (it never held data),
        else format (only while empty), size, allocation, owner."""
        await self.ensure_regular(info)
        have = info.file
        keep = {"mode": have.mode, "uid": have.uid, "gid": have.gid} if have else {}
        if spec.remake:
            # never held data: re-made in full; what the document leaves out keeps what
            # the file has
            spec = dataclasses.replace(spec, **{k: v for k, v in keep.items()
                                                if getattr(spec, k) is None})
            return await self._remake(info, spec)
        wanted = {k: v for k, v in spec.options.items() if k in ("compat", "lazy_refcounts")}
        changes = []  # what only a re-made (empty) image can change
        if spec.format != info.format and not (spec.encryption and info.format == "luks"):
            changes.append(f"format (from {info.format} to {spec.format})")
        changes += [k.replace("_", " ") for k, v in wanted.items() if info.options.get(k) != v]
        if spec.encryption and not info.encrypted:
            changes.append("encryption")
        if spec.backing_path and spec.backing_path != info.backing_path:
            changes.append("backing store")
        if changes:
            check_creatable(spec.format)
            if await self.image_holds_data(info):
                raise Busy(f"cannot change the {' and '.join(changes)} of a volume that "
                           f"holds data ('{info.name}')")
            # the new file is as readable as the document says, else as the old one
            spec = dataclasses.replace(spec, **{k: v for k, v in keep.items()
                                                if getattr(spec, k) is None})
            return await self._remake(info, spec)
        if spec.capacity < info.capacity:
            raise InvalidArgument(
                f"capacity {spec.capacity} is below the current {info.capacity}; "
                "shrinking needs 'resize --shrink'")
        size_before = info.physical
        want = 0
        if spec.allocation:
            want = min(spec.allocation, spec.capacity) if info.format == "raw" \
                else spec.allocation
        more = want - info.allocation if want > info.allocation else 0
        if more:  # refused before the size changes when the space is not there
            await self.io(allocation.check_free, self.dir, more, f"allocating '{info.name}'",
                          what=f"statvfs {self.dir}")
        if spec.capacity > info.capacity:
            info = await self.resize(info, spec.capacity, shrink=False, allocate=False)
        if more:
            await self.io(fileio.reserve, info.path, want, size_before,
                          what=f"allocate {info.path}")
        await self.io(fileio.set_owner, info.path, spec.mode, spec.uid, spec.gid,
                      what=f"chmod {info.path}")
        return await self.probe(info.name, deep=False, fmt=info.format) or info

    async def _remake(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Made beside the old one, then renamed over it: a failure keeps the old."""
        tmp = os.path.join(self.dir, self.temp_name("new", info.name))
        await self.discard(tmp)
        return await self.create(spec, tmp)

    async def clone(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        url = src.options.get(QEMU_SOURCE) if src.path is None else None
        if url is None:
            await self.ensure_regular(src)
        if spec.format not in CREATABLE and (url or spec.format != src.format):
            raise NotSupported(f"cannot convert to format '{spec.format}'")
        path = self.path_of(spec.name)
        if await self.io(os.path.lexists, path, what=f"stat {path}"):
            raise Exists(f"volume target path '{path}' already exists")
        tmp = os.path.join(self.dir, self.temp_name("clone", spec.name))
        await self.discard(tmp)  # left by an interrupted clone (the name is reserved now)
        try:
            if url is not None:  # a network volume of another pool (rbd)
                await fileops.convert_from_url(url, src.format, src.capacity, tmp,
                                               spec.format, report)
            elif spec.format == src.format:
                await fileops.copy_file(src.path, tmp, src.physical, report)
            else:
                if spec.format not in CREATABLE:
                    raise NotSupported(f"cannot convert to format '{spec.format}'")
                await fileops.qemu_convert(src, tmp, spec.format, report)
            await self.io(self.place_new, tmp, path, what=f"rename {tmp}")
        except OSError as exc:
            await self.discard(tmp)
            raise from_oserror(exc, f"cannot clone to '{path}'") from None
        except BaseException:
            await self.discard(tmp)
            raise
        info = await self.probe(spec.name, fmt=spec.format)
        if info is None:
            raise StorageError(f"clone '{path}' vanished")
        return info

    async def wipe(self, info: VolumeInfo, algorithm: str, report,
                   secret_file: str | None = None) -> VolumeInfo:
        await self.ensure_regular(info)
        await fileops.wipe_file(info, algorithm, report, secret_file)
        return await self.probe(info.name, fmt=info.format) or info

    async def snapshot(self, info: VolumeInfo, op: str, name: str,
                       secret_file: str | None = None) -> VolumeInfo:
        await self.ensure_regular(info)
        flag = {"create": "-c", "revert": "-a", "delete": "-d"}[op]
        await fileops.snapshot_op(info, flag, name, secret_file)
        return await self.probe(info.name, fmt=info.format) or info


# ---- the syscalls of the operations above (each run in one worker thread) -------------
