"""Pool commands: start, stop, refresh, build, delete, create (a sized volume in one
line); the state and autostart files. Commands arrive parsed (parsing.py).

Each runs alone on its pool (``claim``: another is refused at once with EBUSY); a pool
whose storage disappears or stops answering while started becomes ``inaccessible``
(its volumes unlisted) until a refresh finds it again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio

from ..backends.base import VolumeSpec
from ..errors import UNREACHABLE, Busy, InvalidArgument, StorageError, timed_out
from ..parsing import CREATE_USAGE, CreateVolume, PoolCommand
from ..xml.pooltypes import POOL_TYPE_INFO
from .objects import DEGRADED, INACCESSIBLE, INACTIVE, RUNNING, Pool, claim
from .recording import error_line
from .volspec import check_allocation, default_spec

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)


class PoolLifecycle:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    # ---- what control offers, and series of commands -------------------------------
    def valid_commands(self, pool: Pool) -> list[str]:
        if not pool.defined or pool.backend is None:
            return []
        b = pool.backend
        if pool.active:
            return ["stop", "refresh", CREATE_USAGE] if b.supports("create_volume") \
                else ["stop", "refresh"]
        cmds = ["start"]
        if b.supports("build"):
            cmds += ["build", "build overwrite"]
        if b.supports("delete"):
            cmds.append("delete")
        return cmds

    def check_series(self, pool: Pool, cmds: list, state_file: bool = False) -> None:
        """Refuse a series of commands when one needs a state that the pool will not be in
        by then (EBUSY), or names a volume format the pool cannot have (EINVAL), before
        any of them runs."""
        if not pool.defined:
            return
        for cmd in cmds:
            if isinstance(cmd, CreateVolume):
                self.create_spec(pool, cmd)
        if len(cmds) < 2:
            return
        active = pool.active
        for cmd in cmds:
            if state_file:
                active = cmd == "running"
                continue
            verb = "create" if isinstance(cmd, CreateVolume) else cmd.verb
            if not active and verb in ("create", "stop", "refresh"):
                raise Busy(f"'{cmd}' after the lines before it: storage pool '{pool.name}' "
                           "would not be active")
            if active and verb in ("start", "build", "delete"):
                raise Busy(f"'{cmd}' after the lines before it: storage pool '{pool.name}' "
                           "would be active")
            active = {"start": True, "stop": False}.get(verb, active)

    def create_spec(self, pool: Pool, cmd: CreateVolume) -> VolumeSpec:
        """What a create line makes: the pool's default format unless --format names one
        of the pool type's volume formats (EINVAL for another)."""
        formats = POOL_TYPE_INFO[pool.definition.type].volume_formats
        fmt = cmd.format
        if fmt is not None and fmt not in formats and not (fmt == "raw" and not formats):
            known = ", ".join(f for f in formats if f != "none") or "raw only"
            raise InvalidArgument(f"unknown volume format '{fmt}' for a pool of type "
                                  f"'{pool.definition.type}' (formats: {known})")
        if fmt is None or (fmt == "raw" and not formats):
            fmt = default_spec(pool, cmd.name).format
        check_allocation(cmd.capacity, cmd.allocation)
        return VolumeSpec(name=cmd.name, format=fmt, capacity=cmd.capacity,
                          allocation=cmd.allocation)

    # ---- the files ------------------------------------------------------------------
    async def command(self, pool: Pool, cmd: PoolCommand | CreateVolume) -> None:
        with self.reg.rec.recording(pool, "control"):
            self.reg.need_definition(pool)
            if isinstance(cmd, CreateVolume):
                spec = self.create_spec(pool, cmd)
                if not pool.active:
                    raise Busy(f"storage pool '{pool.name}' is not active")
                await self.reg.vols.make(pool, spec.name, spec)
                return
            verbs = {"start": self.start, "stop": self.stop, "refresh": self.refresh,
                     "delete": self.delete}
            if cmd.verb == "build":
                await self.build(pool, overwrite=cmd.overwrite)
            else:
                await verbs[cmd.verb](pool)

    async def set_state(self, pool: Pool, word: str) -> None:
        with self.reg.rec.recording(pool, "state"):
            self.reg.need_definition(pool)
            if word == "running" and not pool.active:
                await self.start(pool)
            elif word == "inactive" and pool.active:
                await self.stop(pool)

    async def set_autostart(self, pool: Pool, value: bool) -> None:
        with self.reg.rec.recording(pool, "autostart"):
            self.reg.need_definition(pool)
            if value != pool.autostart:
                self.reg.defs.save(pool, autostart=value)
                pool.autostart = value
                pool.touch()
        self.reg.listener.changed(pool.name)

    # ---- transitions ------------------------------------------------------------------
    async def start(self, pool: Pool, record: bool = True) -> None:
        """Start, and record that the pool runs (unless ``record`` is False: at start-up
        the record already says so); a refused save stops it again."""
        reg = self.reg
        with claim(pool, "start"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is already active")
            await pool.runner.recovered()
            # again: a directory on the way may have become a symlink since the define
            await reg.defs.check_paths(pool, pool.definition)
            save = record and not pool.stored_active
            if save:
                reg.state.check_writable()
            await pool.backend.start()
            try:
                await reg.index.load(pool)
                if save:
                    reg.defs.save(pool, active=True)
            except BaseException:
                pool.drop_volumes()  # never listed: the pool was not active yet
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await pool.backend.stop()
                raise
            self.apply_health(pool, "start")
            pool.touch()
            reg.index.started(pool)
            reg.events.of(pool, "started", f"state={pool.state} volumes={len(pool.volumes)}")
        reg.listener.changed(pool.name)

    async def stop(self, pool: Pool) -> None:
        reg = self.reg
        with claim(pool, "stop"):
            if not pool.active:
                raise Busy(f"storage pool '{pool.name}' is not active")
            if pool.busy_volumes:
                running = [f"{v.busy} of '{v.name}'" for v in pool.volumes.values() if v.busy]
                running += [f"'{n}' being made" for n in sorted(pool.reserved)]
                raise Busy(f"storage pool '{pool.name}' has {pool.busy_volumes} volume "
                           f"operation(s) under way: {', '.join(running) or 'a clone'}")
            was_recorded = pool.stored_active
            if was_recorded:
                reg.defs.save(pool, active=False)  # first: a refused save changes nothing
            try:
                await reg.index.stopping(pool)
                if not pool.runner.stuck:  # storage that hangs is left as it is
                    await pool.backend.stop()
            except BaseException:
                if was_recorded:  # still running: the record says so again
                    try:
                        reg.defs.save(pool, active=True)
                    except StorageError as exc:
                        log.error("pool %s still runs but its record says inactive: %s",
                                  pool.name, exc.reason)
                raise
            reg.index.stopped(pool)
            pool.state = INACTIVE
            names = list(pool.volumes)
            pool.drop_volumes()
            pool.touch()
            reg.events.of(pool, "stopped")
        for vol in names:
            reg.listener.removed(pool.name, vol)
        reg.listener.changed(pool.name)

    async def refresh(self, pool: Pool, announce: bool = True) -> None:
        """List the pool again; ``announce``: a ``refreshed`` event (not for polling)."""
        with claim(pool, "refresh"):
            if not pool.active:
                raise Busy(f"storage pool '{pool.name}' is not active")
            if pool.state == INACCESSIBLE:
                await pool.runner.recovered()
            try:
                await self.reg.index.load(pool, deep=True)
            except StorageError as exc:
                self.lost_storage(pool, exc)
                raise
            if pool.state == INACCESSIBLE:
                self.reg.index.started(pool)
            self.apply_health(pool, "refresh")
            pool.touch()
            if announce:
                self.reg.events.of(pool, "refreshed", f"volumes={len(pool.volumes)}")
        self.reg.listener.changed(pool.name)

    def apply_health(self, pool: Pool, op: str) -> None:
        """running, or degraded when the backend says why (e.g. LVs cannot be activated)."""
        reason = pool.backend.degraded_reason()
        if reason:
            if pool.state != DEGRADED:
                log.warning("pool %s is degraded: %s", pool.name, reason)
            pool.state = DEGRADED
            pool.error = error_line(op, reason)
        else:
            pool.state = RUNNING

    def lost_storage(self, pool: Pool, exc: StorageError, op: str = "refresh") -> None:
        """The storage of a started pool is gone, replaced or hangs: inaccessible, the
        reason in its error file. Gone or replaced: its volumes are unlisted (a refresh
        brings them back once the storage is there again). Hung, not answering within
        a time limit or not reachable (a server gone): they stay, with what storagefs
        last knew (a hung pool's operations fail at once)."""
        if pool.state != INACCESSIBLE:
            log.error("pool %s: storage became inaccessible: %s", pool.name, exc.reason)
            pool.state = INACCESSIBLE
            pool.error = error_line(op, exc.reason)
            pool.touch()
            self.reg.events.of(pool, "inaccessible", exc.reason)
        self.reg.index.stopped(pool)
        if pool.runner.stuck or timed_out(exc) or exc.errno in UNREACHABLE:
            self.reg.listener.changed(pool.name)
            return
        names = list(pool.volumes)
        pool.drop_volumes()
        for vol in names:
            self.reg.listener.removed(pool.name, vol)
            self.reg.events.volume(pool.name, vol, "vanished", "storage inaccessible")
        self.reg.listener.changed(pool.name)

    async def build(self, pool: Pool, overwrite: bool = False) -> None:
        with claim(pool, "build"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is already active")
            await self.reg.defs.check_paths(pool, pool.definition)
            with self.reg.rec.if_cut_short(pool, "the build stopped part way: the storage "
                                           "may be partly built; build again"):
                await pool.backend.build(overwrite=overwrite)
            pool.touch()
            self.reg.events.of(pool, "built", "overwrite" if overwrite else "")
        await self.reg.index.refresh_perms(pool)
        self.reg.listener.changed(pool.name)

    async def delete(self, pool: Pool) -> None:
        with claim(pool, "delete"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is still active")
            with self.reg.rec.if_cut_short(pool, "the delete stopped part way: the storage "
                                           "may be partly deleted; delete again"):
                await pool.backend.delete()
            pool.touch()
            self.reg.events.of(pool, "deleted")
        await self.reg.index.refresh_perms(pool)
        self.reg.listener.changed(pool.name)
