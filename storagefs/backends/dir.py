"""``dir`` pools: a directory of image files (libvirt's storage_backend_fs.c, dir part).
Every syscall on the directory runs through ``io`` (the pool's worker threads).

The directory a running pool works in is the one it started with: ``start`` records
the target's identity (resolved path, st_dev, st_ino), and every storage call of the
pool first checks that the target still resolves to that directory (one realpath and
one lstat, in the same worker thread). A target, or a directory above it, swapped for
a symlink or for another directory makes the call fail before it touches anything
(StorageLost: the pool becomes inaccessible) instead of following the new path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import Busy, InvalidArgument, NotFound, StorageLost, from_oserror
from .base import FILE_POLICY, PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .filevol import FileVolumes

DEFAULT_DIR_MODE = 0o711
T = TypeVar("T")


@dataclass(frozen=True)
class TargetIdentity:
    """What the target directory was when the pool started."""

    real: str
    dev: int
    ino: int


def target_identity(path: str) -> TargetIdentity:
    real = os.path.realpath(path)
    try:
        st = os.lstat(real)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open directory '{path}'") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotFound(f"cannot open directory '{path}': Not a directory")
    return TargetIdentity(real, st.st_dev, st.st_ino)


def verify_target(path: str, want: TargetIdentity) -> None:
    """StorageLost unless ``path`` still leads to the directory ``want`` describes
    (gone altogether is left to the call itself: it fails with ENOENT)."""
    real = os.path.realpath(path)
    if real != want.real:
        raise StorageLost(f"target directory '{path}' was replaced since the pool started: "
                          f"it now leads to '{real}' (a symlink on the way), not to "
                          f"'{want.real}'; nothing was done there (stop and start the pool "
                          "to use what is there now)")
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (want.dev, want.ino):
        raise StorageLost(f"target directory '{path}' was replaced since the pool started: "
                          "it is not the directory the pool started with; nothing was done "
                          "there (stop and start the pool to use what is there now)")


def _checked(path: str, want: TargetIdentity, fn: Callable[..., T], args: tuple) -> T:
    verify_target(path, want)
    return fn(*args)


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


def _start(path: str, tidy) -> TargetIdentity:
    if not is_dir(path):
        raise NotFound(f"cannot open directory '{path}': No such file or directory")
    identity = target_identity(path)
    tidy()
    return identity


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

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        #: the target as it was at start (None while the pool is not started)
        self._identity: TargetIdentity | None = None

    async def io(self, fn: Callable[..., T], *args: Any, what: str = "",
                 timeout: float | None = None) -> T:
        """As PoolBackend.io; while the pool runs, the target is checked first."""
        want = self._identity
        if want is None:
            return await super().io(fn, *args, what=what, timeout=timeout)
        return await super().io(_checked, self.target, want, fn, args, what=what,
                                timeout=timeout)

    async def check_storage(self) -> None:
        if self._identity is not None:
            await self.io(lambda: None, what=f"stat {self.target}")

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
        self._identity = None
        self._identity = await self.io(_start, self.target, self.files.remove_leftovers,
                                       what=f"open {self.target}")

    async def stop(self) -> None:
        self._identity = None

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

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report,
                          secret_file: str | None = None) -> VolumeInfo:
        return await self.files.wipe(info, algorithm, report, secret_file)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str,
                              secret_file: str | None = None) -> VolumeInfo:
        return await self.files.snapshot(info, op, name, secret_file)
