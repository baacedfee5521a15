"""Running ``zfs`` and ``zpool`` (through hostcmd, with time limits), and the argv
storagefs gives them where libvirt's storage_backend_zfs.c decides it (zvol creation).

A failure becomes one StorageError: zfs's own words (several stderr lines as one) with
the errno they mean (zfs_output.ERRNOS); a daemon that does not answer within the time
limit (zfs-fuse stopped) is EIO, its tool killed.
"""

from __future__ import annotations

import errno
import time

import trio

from .. import hostcmd
from ..errors import InvalidArgument, NotSupported, StorageError, ToolTimedOut
from .zfs_output import errno_for, reason

ZFS, ZPOOL = "zfs", "zpool"
#: time limits of a listing and of a change (capped by $STORAGEFS_TOOL_TIMEOUT)
LIST_TIMEOUT, CHANGE_TIMEOUT = 30.0, 120.0


class Daemon:
    """The ZFS daemon of this machine (one per machine: zfs-fuse, or the kernel module).

    When a tool did not finish within its time limit the daemon is taken as hung: every
    later call fails at once with EIO and the reason, instead of waiting out its own time
    limit, except a *probe* (a pool's refresh, start or health check), which tries again
    and, when it answers, ends the hung state."""

    hung_since: float | None = None
    hung_what = ""

    @classmethod
    def reason(cls) -> str:
        secs = int(time.monotonic() - (cls.hung_since or time.monotonic()))
        return (f"the ZFS daemon is not answering ({cls.hung_what} did not finish, {secs} s "
                "ago); a refresh tries again")

    @classmethod
    def hung(cls, what: str) -> None:
        if cls.hung_since is None:
            cls.hung_since, cls.hung_what = time.monotonic(), what

    @classmethod
    def answered(cls) -> None:
        cls.hung_since = None


async def zrun(argv: list[str], *, what: str, timeout: float = LIST_TIMEOUT,
               check: bool = True, probe: bool = False) -> hostcmd.Result:
    """Run zfs or zpool; a failure is StorageError("WHAT: zfs's reason"). While the
    daemon is hung, only a ``probe`` runs a tool; any other call fails at once."""
    if Daemon.hung_since is not None and not probe:
        raise StorageError(f"{what}: {Daemon.reason()}", errno.EIO)
    try:
        res = await hostcmd.run(argv, timeout=timeout, check=False)
    except StorageError as exc:
        if exc.errno == errno.ENOTSUP:  # not installed
            raise
        kind = ToolTimedOut if isinstance(exc, ToolTimedOut) else StorageError
        if kind is ToolTimedOut:
            Daemon.hung(" ".join(argv[:2]))
        raise kind(f"{what}: {exc.reason} (is the ZFS daemon answering?)",
                   errno.EIO) from None
    Daemon.answered()
    if check and res.returncode != 0:
        why = reason(res.stderr, res.stdout) or f"exit {res.returncode}"
        # zfs says "cannot create 'tank/v': ..." itself: then its words are the reason
        raise StorageError(why if why.startswith("cannot ") else f"{what}: {why}",
                           errno_for(why))
    return res


async def zrun_patient(argv: list[str], *, what: str, attempts: int = 6) -> hostcmd.Result:
    """A destroy that zfs-fuse may refuse as busy for a moment (a file system it is
    still remounting after a rollback): tried again for up to ~3 s; a holder that stays
    (a shell's cwd, an open file) is EBUSY with zfs's reason."""
    for attempt in range(attempts):
        try:
            return await zrun(argv, what=what, timeout=CHANGE_TIMEOUT)
        except StorageError as exc:
            if exc.errno != errno.EBUSY or attempt == attempts - 1:
                raise
        await trio.sleep(0.5)
    raise AssertionError("unreachable")  # pragma: no cover


class Volmode:
    """libvirt's virStorageBackendZFSVolModeNeeded: ``zfs get`` without arguments prints
    its usage (exit 2), which names volmode where ``zfs create`` takes it (FreeBSD,
    OpenZFS; not zfs-fuse). Asked once per process."""

    known: bool | None = None

    @classmethod
    async def needed(cls) -> bool:
        if cls.known is None:
            res = await zrun([ZFS, "get"], check=False, what="zfs get")
            cls.known = " volmode " in res.stderr
        return cls.known


def zvol_argv(dataset: str, capacity: int, allocation: int | None, volmode: bool) -> list[str]:
    """``zfs create`` of a zvol as libvirt runs it: sizes in KiB rounded up; sparse
    (``-s``) when the allocation differs from the capacity, with a refreservation of
    the allocation when that is above 0; no allocation given: thick."""
    if capacity <= 0:
        raise InvalidArgument("a zvol needs a capacity above 0")
    argv = [ZFS, "create"]
    if volmode:
        argv += ["-o", "volmode=dev"]
    allocation = capacity if allocation is None else allocation
    if allocation != capacity:
        argv.append("-s")
        if allocation > 0:
            argv += ["-o", f"refreservation={-(-allocation // 1024)}K"]
    return [*argv, "-V", f"{-(-capacity // 1024)}K", dataset]


def dataset_argv(dataset: str, capacity: int, allocation: int | None) -> list[str]:
    """``zfs create`` of a file system: the capacity is its refquota and an allocation
    its refreservation (none given: a dataset takes space as it is written)."""
    argv = [ZFS, "create"]
    if capacity:
        argv += ["-o", f"refquota={capacity}"]
    if allocation:
        argv += ["-o", f"refreservation={allocation}"]
    return [*argv, dataset]


def create_argv(kind: str | None, dataset: str, capacity: int, allocation: int | None,
                volmode: bool) -> list[str]:
    """The argv for a volume document's ``<volume type=...>``: 'dir' a dataset, 'block'
    (or none said) a zvol."""
    if kind == "dir":
        return dataset_argv(dataset, capacity, allocation)
    if kind not in (None, "block"):
        raise NotSupported(f"volumes of zfs pools are zvols (type='block') or datasets "
                           f"(type='dir'), not type '{kind}'")
    return zvol_argv(dataset, capacity, allocation, volmode)
