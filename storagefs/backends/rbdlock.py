"""Volume locks of rbd pools across hosts: RADOS's own exclusive lock (cls_lock), on an
object of the pool beside each image, with a heartbeat that tells a lock left by a host
that died from one held by a host still at work.

Not an advisory lock on the image itself (``rbd lock add``): on an image with the
exclusive-lock feature (the default) that lock is librbd's own, and holding it makes
every write of our own tools fail with EROFS.

- take: write ``beat.COOKIE`` = now on ``storagefs.lock.IMAGE``, then ``rados lock get``
  (exclusive, cookie ``HOST:RANDOM``, description ``HOST OP``); refused: EBUSY naming
  the host and what it does.
- while held: the beat is rewritten every :data:`RENEW` seconds.
- a holder whose beat is older than :func:`stale_after` (``$STORAGEFS_LOCK_STALE``,
  default 60 s) died: its lock is broken (``rados lock break``), logged, and taken.
  Hosts compare their wall clocks: keep them in sync (NTP), as Ceph needs anyway.
- release: ``rados lock break`` of our own locker (another rados process cannot
  ``unlock`` a lock its predecessor took), and the beat removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator

import trio

from ..errors import Busy, StorageError
from .rbdtool import Connection, call, call_json

log = logging.getLogger(__name__)

LOCK_NAME = "storagefs"
#: seconds between two heartbeats of a lock held
RENEW = 5.0
DEFAULT_STALE = 60.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock is taken to be left by a dead host."""
    try:
        return max(1.0, float(os.environ.get("STORAGEFS_LOCK_STALE", DEFAULT_STALE)))
    except ValueError:
        return DEFAULT_STALE


def lock_object(image: str) -> str:
    return f"storagefs.lock.{image}"


async def _rados(conn: Connection, *argv: str, what: str, check: bool = True):
    return await call(conn, "rados", ["-p", conn.pool, *argv], what=what, check=check)


async def _lockers(conn: Connection, obj: str) -> list[dict]:
    try:
        data = await call_json(conn, "rados", ["-p", conn.pool, "lock", "info", obj,
                                               LOCK_NAME], what=f"lock info {obj}")
    except StorageError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    rows = data.get("lockers", []) if isinstance(data, dict) else []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("cookie"), str)]


async def _beat_of(conn: Connection, obj: str, cookie: str) -> float | None:
    res = await _rados(conn, "getxattr", obj, f"beat.{cookie}", what="read the lock's beat",
                       check=False)
    if res.returncode != 0:
        return None
    try:
        return float(res.stdout.strip())
    except ValueError:
        return None


async def _beat(conn: Connection, obj: str, cookie: str) -> None:
    await _rados(conn, "setxattr", obj, f"beat.{cookie}", f"{time.time():.3f}",
                 what=f"heartbeat of the lock on '{obj}'")


async def _break(conn: Connection, obj: str, locker: dict) -> None:
    cookie = locker["cookie"]
    await _rados(conn, "lock", "break", obj, LOCK_NAME, str(locker.get("name", "")),
                 "--lock-cookie", cookie, what=f"break the lock on '{obj}'", check=False)
    await _rados(conn, "rmxattr", obj, f"beat.{cookie}", what="remove the beat", check=False)


def holder_of(locker: dict) -> tuple[str, str]:
    """(host, what it does) from a locker's description ``HOST OP``."""
    desc = str(locker.get("description", "")).strip()
    host, _, op = desc.partition(" ")
    return host or str(locker.get("name", "?")), op or "an operation"


async def _try_take(conn: Connection, obj: str, cookie: str, host: str, op: str) -> bool:
    await _beat(conn, obj, cookie)
    res = await _rados(conn, "lock", "get", obj, LOCK_NAME, "--lock-cookie", cookie,
                       "--lock-description", f"{host} {op}", "--lock-type", "exclusive",
                       what=f"lock '{obj}'", check=False)
    if res.returncode == 0:
        return True
    if "(16)" in res.stderr or "(17)" in res.stderr:
        return False
    await _rados(conn, "rmxattr", obj, f"beat.{cookie}", what="remove the beat", check=False)
    from .rbdtool import ceph_reason
    reason, code = ceph_reason(res.stderr, res.returncode)
    raise StorageError(f"cannot lock '{obj}': {reason}", code)


async def take(conn: Connection, image: str, host: str, op: str) -> str:
    """Take the lock of ``image`` for ``op``; its cookie. EBUSY names the holder."""
    obj = lock_object(image)
    cookie = f"{host}:{secrets.token_hex(4)}"
    for _attempt in range(2):
        if await _try_take(conn, obj, cookie, host, op):
            return cookie
        lockers = await _lockers(conn, obj)
        if not lockers:
            continue  # released meanwhile: try once more
        locker = lockers[0]
        beat = await _beat_of(conn, obj, locker["cookie"])
        age = time.time() - beat if beat is not None else None
        stale = stale_after()
        who, what = holder_of(locker)
        if age is not None and age <= stale:
            await _rados(conn, "rmxattr", obj, f"beat.{cookie}", what="remove the beat",
                         check=False)
            raise Busy(f"volume '{image}' is locked by host '{who}' ({what}, heartbeat "
                       f"{age:.0f} s ago; a lock without heartbeat for {stale:g} s is "
                       "broken)")
        log.warning("volume %s/%s: breaking the lock host %s left (%s; no heartbeat for "
                    "%s s)", conn.pool, image, who, what,
                    "ever" if age is None else f"{age:.0f}")
        await _break(conn, obj, locker)
    await _rados(conn, "rmxattr", obj, f"beat.{cookie}", what="remove the beat", check=False)
    raise Busy(f"volume '{image}' is locked by another host (its lock came back at once)")


async def release(conn: Connection, image: str, cookie: str) -> None:
    obj = lock_object(image)
    for locker in await _lockers(conn, obj):
        if locker.get("cookie") == cookie:
            await _break(conn, obj, locker)
            return
    await _rados(conn, "rmxattr", obj, f"beat.{cookie}", what="remove the beat", check=False)


async def _heartbeat(conn: Connection, image: str, cookie: str) -> None:
    obj = lock_object(image)
    while True:
        await trio.sleep(RENEW)
        try:
            await _beat(conn, obj, cookie)
        except StorageError as exc:
            log.warning("volume %s/%s: lock heartbeat failed: %s", conn.pool, image,
                        exc.reason)


@contextlib.asynccontextmanager
async def held(conn: Connection, image: str, host: str, op: str,
               runner=None) -> AsyncIterator[None]:
    """``async with held(...)``: the lock, its heartbeat running in the pool's task
    group (``runner``) while the block runs, then released."""
    cookie = await take(conn, image, host, op)
    scope = trio.CancelScope()

    async def beating() -> None:
        with scope:
            await _heartbeat(conn, image, cookie)

    if runner is not None:
        runner.start_soon(beating)
    try:
        yield
    finally:
        scope.cancel()
        with trio.CancelScope(shield=True):
            try:
                await release(conn, image, cookie)
            except StorageError as exc:
                log.warning("volume %s/%s: lock not released (%s): other hosts break it "
                            "after %g s", conn.pool, image, exc.reason, stale_after())
