"""``dir`` pools: a directory of image files (libvirt's storage_backend_fs.c, dir part).
Every syscall on the directory runs through ``io`` (the pool's worker threads)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from ..errors import Busy, InvalidArgument, NotFound, from_oserror
from .base import FILE_POLICY, PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .filevol import FileVolumes

DEFAULT_DIR_MODE = 0o711


def make_parents(path: str, mode: int = 0o755) -> None:
    """``mkdir -p`` with an explicit mode for each directory made (storagefs runs with
    umask 077; the directories above a pool stay traversable, as libvirt makes them)."""
    missing = []
    while not os.path.lexists(path) and path not in ("/", ""):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)


def is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def dir_info(path: str) -> PoolInfo:
    """Sizes of the filesystem the directory is on, and the directory's permissions;
    NotFound when it is gone."""
    try:
        vfs = os.statvfs(path)
        st = os.stat(path)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open directory '{path}'") from None
    capacity = vfs.f_frsize * vfs.f_blocks
    return PoolInfo(capacity, capacity - vfs.f_frsize * vfs.f_bfree, vfs.f_frsize * vfs.f_bavail,
                    (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))


def _build(path: str, mode: int, owner: int | None, group: int | None) -> None:
    try:
        make_parents(path)
        if not is_dir(path):
            raise InvalidArgument(f"target '{path}' exists and is not a directory")
        os.chmod(path, mode)
        if owner is not None or group is not None:
            os.chown(path, -1 if owner is None else owner, -1 if group is None else group)
    except OSError as exc:
        raise from_oserror(exc, f"cannot create directory '{path}'") from None


def _start(path: str, tidy) -> None:
    if not is_dir(path):
        raise NotFound(f"cannot open directory '{path}': No such file or directory")
    tidy()


def _delete(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise from_oserror(exc, f"failed to remove pool '{path}'") from None


class DirBackend(PoolBackend):
    type = "dir"
    policy = FILE_POLICY

    @property
    def target(self) -> str:
        path = self.definition.target_path
        if not path or not os.path.isabs(path):
            raise InvalidArgument(f"storage pool target path {path!r} must be absolute")
        return path

    @property
    def files(self) -> FileVolumes:
        return FileVolumes(self.target, self.io)

    async def check(self) -> bool:
        return await self.io(is_dir, self.target, what=f"stat {self.target}")

    async def build(self, overwrite: bool = False) -> None:
        perms = self.definition.target_permissions
        mode = perms.mode if perms and perms.mode is not None else DEFAULT_DIR_MODE
        await self.io(_build, self.target, mode, perms.owner if perms else None,
                      perms.group if perms else None, what=f"mkdir {self.target}")

    async def start(self) -> None:
        await self.io(_start, self.target, self.files.remove_leftovers,
                      what=f"open {self.target}")

    async def delete(self) -> None:
        await self.io(_delete, self.target, what=f"rmdir {self.target}")

    async def target_perms(self) -> tuple[int, int, int] | None:
        def perms(path: str) -> tuple[int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

        return await self.io(perms, self.target, what=f"stat {self.target}")

    async def pool_info(self) -> PoolInfo | None:
        return await self.io(dir_info, self.target, what=f"statvfs {self.target}")

    async def refresh(self, formats: Mapping[str, str] | None = None,
                      ) -> tuple[PoolInfo, list[VolumeInfo]]:
        info = await self.pool_info()
        # details (qemu-img) follow later, in the background
        return info or PoolInfo(), await self.files.scan(formats or {})

    def watch_dir(self) -> str | None:
        return self.target

    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        return await self.files.probe(name, fmt=fmt)

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        return await self.files.details(info)

    async def unchanged(self, info: VolumeInfo) -> bool:
        return await self.files.unchanged(info)

    async def signature(self, info: VolumeInfo) -> list[int] | None:
        return await self.files.signature(info)

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        return await self.files.create(spec)  # checks the free space of an allocation

    async def delete_volume(self, info: VolumeInfo) -> None:
        await self.files.delete(info)

    async def resize_volume(self, info: VolumeInfo, capacity: int, *,
                            shrink: bool = False, allocate: bool = False,
                            secret_file: str | None = None) -> VolumeInfo:
        return await self.files.resize(info, capacity, shrink=shrink, allocate=allocate,
                                       secret_file=secret_file)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        if await self.files.probe(info.name, deep=False, fmt=info.format) is None:
            raise Busy(f"volume '{info.name}' is no longer there")
        return await self.files.update(info, spec)  # room is checked before any change

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        return await self.files.clone(src, spec, report)

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        return await self.files.wipe(info, algorithm, report)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        return await self.files.snapshot(info, op, name)
