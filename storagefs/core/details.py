"""What only a host tool tells of a volume (backing store, snapshots, qemu-img's
figures), filled in after a listing, one volume at a time: a slow or hung qemu-img
never delays a mount or an ``ls``. A pool's stop cancels the probe of its volume under
way (the probe must not keep the pool's files busy)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING

import trio

from ..errors import StorageError
from ..pathrules import normal
from .objects import Pool, Volume

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

#: an image that other programs keep writing (a running guest's) is looked at by
#: qemu-img at most this often; the last change is always looked at
CHANGED_EVERY = 5.0


class DetailsQueue:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        #: volumes refreshed from their headers only, waiting for qemu-img's details
        self._wanted: dict[str, set[str]] = {}
        self._event = trio.Event()
        self._running: tuple[str, trio.CancelScope] | None = None
        #: when each volume's details were last filled, and those due later
        self._filled: dict[tuple[str, str], float] = {}
        self._later: dict[tuple[str, str], float] = {}
        #: looks the watcher asked for: a file still being written may not parse yet,
        #: so a failure there is no error of the volume (the next look tells)
        self._quiet: set[tuple[str, str]] = set()

    def want_changed(self, pool: Pool, name: str) -> None:
        """A file other programs changed: its details again, soon, but not more often
        than CHANGED_EVERY (a trailing look follows the last change)."""
        key = (pool.name, name)
        due = self._filled.get(key, -math.inf) + CHANGED_EVERY
        if due <= time.monotonic():
            self.want(pool, [name])
        elif key not in self._later:
            self._later[key] = due
            self._event.set()  # the worker's next wake-up moves
        self._quiet.add(key)

    def _due(self) -> None:
        now = time.monotonic()
        if len(self._filled) > 1000:  # a look older than CHANGED_EVERY holds nothing back
            self._filled = {k: t for k, t in self._filled.items()
                            if t + CHANGED_EVERY > now}
        for key, due in list(self._later.items()):
            if due <= now:
                del self._later[key]
                self._wanted.setdefault(key[0], set()).add(key[1])

    def want(self, pool: Pool, names: list[str]) -> None:
        self._quiet.difference_update((pool.name, n) for n in names)
        if names:
            self._wanted.setdefault(pool.name, set()).update(names)
            self._event.set()

    def wanted(self, pool: Pool) -> set[str]:
        return self._wanted.get(pool.name) or set()

    def drop(self, pool: Pool) -> None:
        self._wanted.pop(pool.name, None)
        for table in (self._filled, self._later):
            for key in [k for k in table if k[0] == pool.name]:
                del table[key]
        self._quiet = {k for k in self._quiet if k[0] != pool.name}

    async def cancel(self, pool: Pool) -> None:
        """No more probes of the pool's volumes; the one under way cancelled and
        finished (its tool killed)."""
        self.drop(pool)
        with trio.move_on_after(10):
            while self._running is not None and self._running[0] == pool.name:
                self._running[1].cancel()
                await trio.sleep(0.01)

    async def worker(self) -> None:
        while True:
            wake = min(self._later.values(), default=math.inf)
            with trio.move_on_after(max(0.0, wake - time.monotonic())):
                await self._event.wait()
            self._event = trio.Event()
            self._due()
            pending, self._wanted = self._wanted, {}
            for pool_name, names in pending.items():
                for name in sorted(names):
                    pool = self.reg.pools.get(pool_name)
                    vol = pool.volumes.get(name) if pool is not None else None
                    if vol is None or vol.busy or not pool.active or pool.runner.stuck:
                        continue
                    with trio.CancelScope() as scope:
                        self._running = (pool_name, scope)
                        key = (pool_name, name)
                        quiet = key in self._quiet
                        if key not in self._later:  # a later look stays quiet too
                            self._quiet.discard(key)
                        try:
                            await self.fill(vol, quiet)
                        finally:
                            self._running = None

    async def fill(self, vol: Volume, quiet: bool = False) -> None:
        pool, name = vol.pool, vol.name
        self._filled[(pool.name, name)] = time.monotonic()
        try:
            info = await pool.backend.volume_details(dataclasses.replace(vol.info))
        except StorageError as exc:
            if quiet:
                log.info("volume %s/%s: details not read (still being written?): %s",
                         pool.name, name, exc.reason)
            else:
                self.reg.rec.note_refusal(vol, "refresh", exc, background=True)
            return
        except Exception:
            log.exception("volume %s/%s: details failed", pool.name, name)
            return
        if pool.volumes.get(name) is vol and not vol.busy:
            self.reg.index.update(vol, info)
            await self.reg.chains.show_loop(vol, info)
            await self._recheck_dependents(vol)

    async def _recheck_dependents(self, vol: Volume) -> None:
        """Volumes backed by this one: a chain checked while its backing file did not
        exist yet (a qcow2 made before the file it names) is checked again now that the
        file is here, so a loop it closes is shown on every volume of the loop."""
        if not vol.info.path:
            return
        here = normal(vol.info.path)
        for other in list(vol.pool.volumes.values()):
            backing = other.info.backing_path
            if other is vol or other.busy or not backing or normal(backing) != here:
                continue
            await self.reg.chains.show_loop(other, other.info)
