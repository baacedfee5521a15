"""Where a pool's storage may be (SPEC "Names are safe").

A pool's target or source is never inside the storagefs mount (storagefs would
wait on itself: a pool there deadlocked the whole tree), a system tree, or the
state directory (except ``STATE/images``, the default pool's target). Paths are
compared as written (made normal) and after resolving symlinks, in a worker
thread: resolving a path that leads into our own mount from the event loop
would wait on the very loop that has to answer.
"""

from __future__ import annotations

import errno
import os

import trio

from .errors import NotPermitted, StorageError

#: trees no pool may use; /dev only as device-directory pools use it
SYSTEM_TREES = ("/etc", "/proc", "/sys", "/boot", "/run", "/dev")
#: pool types whose target is a directory of device nodes (libvirt: /dev, /dev/VG,
#: /dev/disk/by-path, /dev/zvol/POOL)
DEVICE_DIR_TYPES = ("disk", "logical", "iscsi", "iscsi-direct", "scsi", "mpath", "zfs")
RESOLVE_TIMEOUT = 10.0


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


def refusal(what: str, path: str, real: str, pool_type: str, *, mountpoint: str | None,
            state_dir: str, images_dir: str) -> str | None:
    """Why ``path`` (resolved: ``real``) cannot be a pool's ``what`` ('target' or
    'source'), or None when it can."""
    shown = f"{what} '{path}'" + (f" (that is '{real}')" if real != normal(path) else "")
    for p in dict.fromkeys((normal(path), real)):
        if mountpoint and inside(p, mountpoint):
            return f"storage pool {shown} is inside the storagefs mount {mountpoint}"
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


async def check_pool_paths(defn, *, mountpoint: str | None, state_dir: str,
                           images_dir: str) -> tuple[str | None, tuple[str, ...]]:
    """Refuse (EPERM) a definition whose target or local source devices are where no
    pool may be; return the resolved target and source device paths."""
    real_target = None
    if defn.target_path and defn.target_path.startswith("/"):
        real_target = await resolve(defn.target_path)
        why = refusal("target", defn.target_path, real_target, defn.type,
                      mountpoint=mountpoint, state_dir=state_dir, images_dir=images_dir)
        if why:
            raise NotPermitted(why)
    sources = []
    source = getattr(defn, "source", None)
    for dev in getattr(source, "devices", None) or []:
        if not dev.path or not dev.path.startswith("/"):
            continue  # an iSCSI IQN, a remote name: nothing on this host's tree
        real = await resolve(dev.path)
        why = refusal("source", dev.path, real, defn.type, mountpoint=mountpoint,
                      state_dir=state_dir, images_dir=images_dir)
        if why:
            raise NotPermitted(why)
        sources.append(real)
    return real_target, tuple(sources)
