"""Where a pool's storage may be (SPEC "Names are safe").

A pool's target or source is never inside the storagefs mount (storagefs would
wait on itself: a pool there deadlocked the whole tree), inside any other storagefs
mount of this host (a pool mounted over another instance's tree, or one instance
waiting on another), a system tree, or the state directory (except
``STATE/images``, the default pool's target). Paths are compared as written (made
normal) first, and only then resolved (symlinks), in a worker thread: resolving a
path that leads into our own mount from the event loop would wait on the very loop
that has to answer. The storagefs mounts are read from /proc/self/mountinfo (fstype
``fuse.storagefs``) at each check, so a mount made after a pool was defined counts
when the pool starts.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence

import trio

from .errors import InvalidArgument, NotPermitted, StorageError

#: trees no pool may use; /dev only as device-directory pools use it
SYSTEM_TREES = ("/etc", "/proc", "/sys", "/boot", "/run", "/dev")
#: pool types whose target is a directory of device nodes (libvirt: /dev, /dev/VG,
#: /dev/disk/by-path, /dev/zvol/POOL)
DEVICE_DIR_TYPES = ("disk", "logical", "iscsi", "iscsi-direct", "scsi", "mpath", "zfs")
RESOLVE_TIMEOUT = 10.0
MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def storagefs_mounts(mountinfo: str = MOUNTINFO) -> tuple[str, ...]:
    """The mount points of every storagefs mount of this host (fstype
    ``fuse.storagefs``; ``fuse`` with source ``storagefs`` where the kernel shows no
    subtype). A read of a proc file: it never touches the mounts themselves."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    found = []
    for line in lines:
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            fstype, source = fields[sep + 1], fields[sep + 2]
        except (ValueError, IndexError):
            continue
        if fstype == "fuse.storagefs" or (fstype in ("fuse", "fuseblk")
                                          and source == "storagefs"):
            found.append(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return tuple(dict.fromkeys(found))


def inside(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both absolute and normal)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def normal(path: str) -> str:
    """The path with '//', '/./' and '..' made normal (lexically, no syscall)."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


async def resolve(path: str, timeout: float = RESOLVE_TIMEOUT) -> str:
    """os.path.realpath in a worker thread, within ``timeout`` (EIO after it)."""
    with trio.move_on_after(timeout):
        return await trio.to_thread.run_sync(os.path.realpath, path, abandon_on_cancel=True)
    raise StorageError(f"'{path}' could not be resolved within {timeout:.0f} s "
                       "(its storage does not answer)", errno.EIO)


async def check_outside_mounts(path: str, mountpoint: str | None) -> None:
    """InvalidArgument when ``path`` (as written, then resolved) is inside our mount or
    another storagefs mount of the host (a sources query)."""
    others = [m for m in storagefs_mounts() if m != mountpoint]
    for real in (normal(path), None):
        if real is None:
            real = await resolve(path)
        if mountpoint and inside(real, mountpoint):
            raise InvalidArgument(f"'{path}' is inside the storagefs mount {mountpoint}")
        for other in others:
            if inside(real, other):
                raise InvalidArgument(f"'{path}' is inside {other}, the mount of another "
                                      "storagefs")


def refusal(what: str, path: str, real: str, pool_type: str, *, mountpoint: str | None,
            state_dir: str, images_dir: str, others: Sequence[str] = ()) -> str | None:
    """Why ``path`` (resolved: ``real``) cannot be a pool's ``what`` ('target' or
    'source'), or None when it can; ``others``: the storagefs mounts of the host."""
    shown = f"{what} '{path}'" + (f" (that is '{real}')" if real != normal(path) else "")
    for p in dict.fromkeys((normal(path), real)):
        if mountpoint and inside(p, mountpoint):
            return f"storage pool {shown} is inside the storagefs mount {mountpoint}"
        for other in others:
            if other != mountpoint and inside(p, other):
                return (f"storage pool {shown} is inside {other}, the mount of another "
                        "storagefs")
        if p == "/":
            return f"storage pool {shown} is the root directory"
        if inside(p, state_dir) and not inside(p, images_dir):
            return (f"storage pool {shown} is inside storagefs's state directory "
                    f"{state_dir} (only {images_dir} may hold volumes)")
        for tree in SYSTEM_TREES:
            if not inside(p, tree):
                continue
            if tree == "/dev" and (what == "source" or pool_type in DEVICE_DIR_TYPES):
                continue  # device nodes, as libvirt's disk and logical pools use them
            return f"storage pool {shown} is inside the system tree {tree}"
    return None


async def _checked(what: str, path: str, pool_type: str, *, others: Sequence[str],
                   mountpoint: str | None, state_dir: str, images_dir: str) -> str:
    """``path`` resolved, refused (EPERM) where no pool may be: as written first, so
    that a path in a storagefs mount is refused without being looked at."""
    for real in (normal(path), None):
        if real is None:
            real = await resolve(path)
        why = refusal(what, path, real, pool_type, mountpoint=mountpoint,
                      state_dir=state_dir, images_dir=images_dir, others=others)
        if why:
            raise NotPermitted(why)
    return real


async def check_pool_paths(defn, *, mountpoint: str | None, state_dir: str,
                           images_dir: str) -> tuple[str | None, tuple[str, ...]]:
    """Refuse (EPERM) a definition whose target or local source devices are where no
    pool may be; return the resolved target and source device paths."""
    others = storagefs_mounts()
    where = {"mountpoint": mountpoint, "state_dir": state_dir, "images_dir": images_dir}
    real_target = None
    if defn.target_path and defn.target_path.startswith("/"):
        real_target = await _checked("target", defn.target_path, defn.type, others=others,
                                     **where)
    sources = []
    source = getattr(defn, "source", None)
    for dev in getattr(source, "devices", None) or []:
        if not dev.path or not dev.path.startswith("/"):
            continue  # an iSCSI IQN, a remote name: nothing on this host's tree
        sources.append(await _checked("source", dev.path, defn.type, others=others,
                                      **where))
    return real_target, tuple(sources)
