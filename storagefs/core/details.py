"""What only a host tool tells of a volume (backing store, snapshots, qemu-img's
figures), filled in after a listing, one volume at a time: a slow or hung qemu-img
never delays a mount or an ``ls``. A pool's stop cancels the probe of its volume under
way (the probe must not keep the pool's files busy)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import trio

from ..errors import StorageError
from .objects import Pool, Volume

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)


class DetailsQueue:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        #: volumes refreshed from their headers only, waiting for qemu-img's details
        self._wanted: dict[str, set[str]] = {}
        self._event = trio.Event()
        self._running: tuple[str, trio.CancelScope] | None = None

    def want(self, pool: Pool, names: list[str]) -> None:
        if names:
            self._wanted.setdefault(pool.name, set()).update(names)
            self._event.set()

    def wanted(self, pool: Pool) -> set[str]:
        return self._wanted.get(pool.name) or set()

    def drop(self, pool: Pool) -> None:
        self._wanted.pop(pool.name, None)

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
            await self._event.wait()
            self._event = trio.Event()
            pending, self._wanted = self._wanted, {}
            for pool_name, names in pending.items():
                for name in sorted(names):
                    pool = self.reg.pools.get(pool_name)
                    vol = pool.volumes.get(name) if pool is not None else None
                    if vol is None or vol.busy or not pool.active or pool.runner.stuck:
                        continue
                    with trio.CancelScope() as scope:
                        self._running = (pool_name, scope)
                        try:
                            await self.fill(vol)
                        finally:
                            self._running = None

    async def fill(self, vol: Volume) -> None:
        pool, name = vol.pool, vol.name
        try:
            info = await pool.backend.volume_details(dataclasses.replace(vol.info))
        except StorageError as exc:
            self.reg.rec.note_refusal(vol, "refresh", exc, background=True)
            return
        except Exception:
            log.exception("volume %s/%s: details failed", pool.name, name)
            return
        if pool.volumes.get(name) is vol and not vol.busy:
            self.reg.index.update(vol, info)
            await self.reg.chains.show_loop(vol, info)
