"""The live volume index and the figures cache: what lookup, readdir and read answer
from (SPEC "No call waits on storage", "Generated files tell the truth").

``pool.volumes`` is filled by a refresh, changed by storagefs's own operations, and
kept current between them by the backend's way of listing: inotify on the pool's
directory (a probe per changed name, coalesced, so figures that move with guest I/O
lag by at most a second) or polling at the backend's interval while someone reads the
pool. Each running pool has a task of its own, in its own task group (runner.py), that
refreshes its figures with a time limit: storage that stops answering makes that pool
inaccessible ("not responding for N s") and holds up nothing else. Every exception a
backend raises in these workers is recorded on the object, never ends the mount.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from typing import TYPE_CHECKING

import trio

from ..backends.base import VolumeInfo
from ..errors import Busy, StorageError
from ..names import check_name
from ..watch import DirWatcher
from .details import DetailsQueue
from .objects import Pool, Volume, now_ns
from .recording import error_line
from .volspec import stored_format

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

#: a changed name is probed at most this often (guest I/O sends an event per write)
PROBE_EVERY = 0.5
#: a watched pool's figures are refreshed at least this often (and soon after changes)
FIGURES_EVERY = 2.0
#: a polled pool is listed while someone read it within this many seconds
READERS_WITHIN = 30.0
#: pool operations during which its storage may go away without being lost
STOPPING = ("stop", "undefine")
#: errnos of storage that is gone (the pool becomes inaccessible)
LOST = (errno.ENOENT, errno.EIO, errno.ENOTCONN, errno.ECONNREFUSED, errno.ECONNRESET,
        errno.ENETUNREACH, errno.ETIMEDOUT, errno.EHOSTDOWN,
        errno.EHOSTUNREACH, errno.ESTALE)


class VolumeIndex:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.watcher: DirWatcher | None = None
        self.nursery: trio.Nursery | None = None
        self._dirty: dict[str, set[str | None]] = {}
        self._dirty_event = trio.Event()
        self.details = DetailsQueue(reg)
        #: pools whose figures should be refreshed soon (after a change)
        self._figures_due: dict[str, trio.Event] = {}

    # ---- background tasks ----------------------------------------------------------
    async def run_background(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.watcher = DirWatcher(self._on_dir_event)
        nursery.start_soon(self.watcher.run)
        nursery.start_soon(self._probe_worker)
        nursery.start_soon(self.details.worker)
        for pool in list(self.reg.pools.values()):
            if pool.active:
                self.started(pool)

    def started(self, pool: Pool) -> None:
        """The pool runs (again): watch it, and give it its task group and figures task."""
        if self.nursery is None or pool.runner is None:
            return
        wanted = self.details.wanted(pool)  # by the listing its start just made
        self.stopped(pool)
        self.details.want(pool, sorted(wanted))
        self.nursery.start_soon(self._pool_tasks, pool)

    async def _pool_tasks(self, pool: Pool) -> None:
        runner = pool.runner
        await self.nursery.start(runner.serve)
        runner.start_soon(self._watch, pool)
        runner.start_soon(self._figures_task, pool)

    async def _watch(self, pool: Pool) -> None:
        d = pool.backend.watch_dir() if pool.backend.policy.watchable else None
        if d and self.watcher is not None:
            try:  # inotify_add_watch resolves the path: storage that hangs would hang it
                await pool.runner.io(self.watcher.add, d, what=f"watch {d}")
            except StorageError as exc:
                log.warning("pool %s: cannot watch %s: %s", pool.name, d, exc.reason)

    def stopped(self, pool: Pool) -> None:
        """The pool stopped or its storage went away: no more watching or refreshing."""
        if self.watcher is not None and pool.backend is not None:
            d = pool.backend.watch_dir()
            if d:
                self.watcher.remove(d)
        if pool.runner is not None:
            pool.runner.stop_tasks()
        self.details.drop(pool)
        self._figures_due.pop(pool.name, None)

    async def stopping(self, pool: Pool) -> None:
        """Before a pool stops: no more background probes of its volumes, and the one
        under way (if any) cancelled and finished (its tool killed)."""
        await self.details.cancel(pool)

    # ---- figures --------------------------------------------------------------------
    def figures_changed(self, pool: Pool) -> None:
        """Something in the pool changed: its figures are refreshed soon (coalesced)."""
        due = self._figures_due.get(pool.name)
        if due is not None:
            due.set()

    async def _figures_task(self, pool: Pool) -> None:
        """Refresh the pool's figures soon after a change and every FIGURES_EVERY (or
        poll a pool that cannot be watched); storage that fails or stops answering
        makes the pool inaccessible. Never raises (the mount must not end)."""
        policy = pool.backend.policy
        polled = not policy.watchable and policy.poll_interval is not None
        while True:
            due = self._figures_due[pool.name] = trio.Event()
            with trio.move_on_after(policy.poll_interval if polled else FIGURES_EVERY):
                await due.wait()
            if not pool.active or pool.runner.stuck or pool.busy in STOPPING:
                continue
            try:
                if polled and self._read_lately(pool):
                    await self._poll(pool)
                await self.refresh_figures(pool)
            except StorageError as exc:
                if pool.busy in STOPPING:
                    continue  # its storage goes away because a user stops it
                if pool.runner.stuck or exc.errno in LOST:
                    self.reg.rec.count_failure(pool, "refresh", exc)
                    self.reg.life.lost_storage(pool, exc)
                    return
                log.warning("pool %s: figures not refreshed: %s", pool.name, exc.reason)
            except Exception:
                log.exception("pool %s: figures refresh failed", pool.name)
            await trio.sleep(0.2)  # coalesce bursts of changes

    async def settle(self, pool: Pool) -> None:
        """After storagefs's own operation: the pool's figures are refreshed before the
        operation returns (the next cat sees them), best effort within the time limit."""
        if not pool.active or pool.runner.stuck:
            return
        try:
            await self.refresh_figures(pool)
        except StorageError as exc:
            log.info("pool %s: figures not refreshed: %s", pool.name, exc.reason)

    async def refresh_figures(self, pool: Pool) -> None:
        info = await pool.backend.pool_info()
        if info is not None and info != pool.info:
            pool.info = info
            pool.touch()
            self.reg.listener.changed(pool.name)
        pool.refreshed = time.monotonic()
        allocations = await pool.backend.volume_allocations()
        for name, allocation in (allocations or {}).items():
            vol = pool.volumes.get(name)
            if vol is not None and not vol.busy and vol.info.allocation != allocation:
                self.update(vol, dataclasses.replace(vol.info, allocation=allocation))

    async def refresh_perms(self, pool: Pool) -> None:
        """The target's permissions for status.xml of a pool that is not running (a
        running one has them with its figures); best effort, within the time limit."""
        try:
            perms = await pool.backend.target_perms()
        except StorageError:
            return
        if perms != pool.info.target_perms:
            pool.info = dataclasses.replace(pool.info, target_perms=perms)
            pool.touch()
            self.reg.listener.changed(pool.name)

    @staticmethod
    def _read_lately(pool: Pool) -> bool:
        return time.monotonic() - pool.last_read < READERS_WITHIN

    async def _poll(self, pool: Pool) -> None:
        """A pool that cannot be watched, listed again (new and gone volumes). The poll
        claims nothing, so no user's command is refused because one runs; what it found
        is dropped when an operation ran on the pool or changed it meanwhile (that
        operation's own result is newer). A failure is raised to the figures task."""
        if pool.busy or pool.busy_volumes:
            return
        version, began = pool.version, now_ns()
        stored, formats = self._formats(pool)
        info, found = await pool.backend.refresh(formats)
        if pool.busy or pool.busy_volumes or pool.version != version or not pool.active:
            return
        changed, fresh = self._apply(pool, info, found, stored, formats, began, deep=False)
        was = pool.state
        self.reg.life.apply_health(pool, "refresh")
        if not pool.backend.policy.listing_has_details:
            self.details.want(pool, [v.name for v in found
                                     if v.format != "raw" and v.name in fresh])
        if changed or pool.state != was:
            pool.touch()
            self.reg.listener.changed(pool.name)

    # ---- watched directories ------------------------------------------------------------
    def _on_dir_event(self, directory: str, name: str | None, gone: bool) -> None:
        pool = self.reg.defs.by_target(directory)
        if pool is None or not pool.active:
            return
        self._dirty.setdefault(pool.name, set()).add(name)
        self._dirty_event.set()

    def probe_soon(self, pool: Pool, name: str) -> None:
        """Probe one volume in the background (one another host made meanwhile: the host
        told EEXIST lists it at once, not at its next poll)."""
        self._dirty.setdefault(pool.name, set()).add(name)
        self._dirty_event.set()

    async def _probe_worker(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for pool_name, names in dirty.items():
                pool = self.reg.pools.get(pool_name)
                if pool is None or not pool.active or pool.runner.stuck:
                    continue
                if None in names:
                    await self._rescan(pool)
                    continue
                with self.reg.listener.batch():
                    for name in names:
                        try:
                            await self._probe_one(pool, name)
                        except StorageError as exc:
                            log.info("pool %s: probe of %s: %s", pool.name, name, exc.reason)
                        except Exception:
                            log.exception("pool %s: probe of %s failed", pool.name, name)
                self.figures_changed(pool)
            await trio.sleep(PROBE_EVERY)  # events of the next half second come together

    async def _rescan(self, pool: Pool) -> None:
        try:
            await self.reg.life.refresh(pool)
        except Busy:
            if pool.active and pool.busy and self.nursery is not None:
                # a user's operation runs: rescan once it is done
                self.nursery.start_soon(self._rescan_later, pool.name)
        except StorageError as exc:
            # the pool is inaccessible until its storage is back
            self.reg.rec.note_refusal(pool, "refresh", exc, background=True)

    async def _rescan_later(self, pool_name: str) -> None:
        await trio.sleep(0.5)
        self._dirty.setdefault(pool_name, set()).add(None)
        self._dirty_event.set()

    async def _probe_one(self, pool: Pool, name: str) -> None:
        if name in pool.reserved or name.startswith("."):
            return
        vol = pool.volumes.get(name)
        if vol is not None and vol.busy:
            return  # our own operation updates it
        if vol is not None and await pool.backend.unchanged(vol.info):
            return  # the event was our own write, or a touch: nothing to probe
        fmt = vol.recorded_format if vol is not None else None
        info = await pool.backend.probe_volume(name, fmt)
        if not pool.active or name in pool.reserved:
            return
        vol = pool.volumes.get(name)
        if info is None:
            if vol is not None and not vol.busy and not vol.pending:
                pool.drop_volume(name)
                # its record goes with it: a file of that name found later is probed
                self.reg.state.delete_volume(pool.name, name)
                self.reg.listener.removed(pool.name, name)
                self.reg.events.volume(pool.name, name, "vanished")
            return
        if vol is None:
            try:
                check_name(name)
            except StorageError:
                return
            pool.volumes[name] = Volume(pool, name, info)
            self.reg.listener.added(pool.name, name)
            self.reg.events.volume(pool.name, name, "appeared", f"format={info.format}")
        elif not vol.busy:
            vol.pending = False
            self.update(vol, info)
        else:
            return
        if info.format != "raw" and not pool.backend.policy.listing_has_details:
            self.details.want_changed(pool, name)  # its backing store, as a listing's

    def update(self, vol: Volume, info: VolumeInfo) -> None:
        vol.info = info
        vol.touch()
        self.reg.listener.changed(vol.pool.name, vol.name)

    # ---- a whole refresh ----------------------------------------------------------------
    def _formats(self, pool: Pool) -> tuple[dict, dict[str, str]]:
        """The pool's volume records, and the format each volume has on record."""
        stored = self.reg.state.load_volumes(pool.name)
        formats = {n: f for n, f in ((n, stored_format(pool, sv))
                                     for n, sv in stored.items()) if f}
        formats.update({n: v.recorded_format for n, v in pool.volumes.items()
                        if v.recorded_format})
        return stored, formats

    async def load(self, pool: Pool, deep: bool = False) -> None:
        """Refresh the pool from its storage; keep Volume objects that still exist.

        Volumes come from cheap probes (headers); qemu-img's details follow in the
        background, or at once when ``deep`` (a refresh the user asked for). Unless
        ``deep``, a volume whose file is as it was keeps what qemu-img said of it."""
        began = now_ns()
        stored, formats = self._formats(pool)
        info, found = await pool.backend.refresh(formats)
        _, fresh = self._apply(pool, info, found, stored, formats, began, deep)
        if pool.backend.policy.listing_has_details:
            return
        # a refresh the user asked for fills every volume, those a watcher's probe
        # touched while the listing ran (kept out of ``fresh``) included
        slow = [v.name for v in found if v.format != "raw" and (deep or v.name in fresh)]
        if not deep:
            self.details.want(pool, slow)
            return
        for name in slow:
            vol = pool.volumes.get(name)
            if vol is not None and not vol.busy:
                await self.details.fill(vol)

    def _apply(self, pool: Pool, info, found: list[VolumeInfo], stored: dict,
               formats: dict[str, str], began: int, deep: bool) -> tuple[bool, set[str]]:
        """Put a listing begun at ``began`` in place: whether anything changed, and the
        volumes that are new or changed (the ones whose details are wanted again).
        What storagefs itself changed since the listing began is newer and kept."""
        with self.reg.listener.batch():
            return self._apply_listing(pool, info, found, stored, formats, began, deep)

    def _apply_listing(self, pool: Pool, info, found: list[VolumeInfo], stored: dict,
                       formats: dict[str, str], began: int, deep: bool
                       ) -> tuple[bool, set[str]]:
        reg = self.reg
        changed = info != pool.info
        pool.info = info
        pool.refreshed = time.monotonic()
        seen, fresh = set(), set()
        for vinfo in found:
            seen.add(vinfo.name)
            vol = pool.volumes.get(vinfo.name)
            if vinfo.name in pool.reserved or (vol is not None and vol.changed_ns >= began):
                continue  # being made, or changed by storagefs since the listing began
            if vol is not None and not deep and not vol.busy and same_file(vol.info, vinfo):
                continue
            fresh.add(vinfo.name)
            if vol is None:
                vol = Volume(pool, vinfo.name, vinfo)
                sv = stored.get(vinfo.name)
                if sv is not None and sv.broken:
                    vol.error = error_line("load", sv.broken)
                elif sv is not None:
                    vol.config, vol.meta, vol.made = sv.config, sv.meta, sv.made
                    vol.recorded_format = formats.get(vinfo.name)
                pool.volumes[vinfo.name] = vol
                changed = True
                if pool.active:
                    reg.listener.added(pool.name, vinfo.name)
                    reg.events.volume(pool.name, vinfo.name, "appeared", f"format={vinfo.format}")
            elif not vol.busy and (vol.pending or vol.info != vinfo):
                vol.info = vinfo
                vol.pending = False  # made outside storagefs meanwhile
                vol.touch()
                changed = True
        for name in [n for n, v in pool.volumes.items()
                     if n not in seen and n not in pool.reserved and not v.pending
                     and not v.busy and v.changed_ns < began]:  # an rmdir drops its own
            pool.drop_volume(name)
            reg.listener.removed(pool.name, name)
            changed = True
            reg.events.volume(pool.name, name, "vanished")
        for name, sv in stored.items():
            if name not in seen and name not in pool.volumes and name not in pool.reserved \
                    and not sv.broken:
                try:  # the record of a volume that is gone: tidied, not required
                    reg.state.delete_volume(pool.name, name)
                except StorageError as exc:
                    log.warning("pool %s: %s", pool.name, exc.reason)
        return changed, fresh


def same_file(old: VolumeInfo, new: VolumeInfo) -> bool:
    """True when a fresh probe shows the file as storagefs last knew it (same size,
    allocation, times, format): what qemu-img said of it still holds."""
    a, b = old.file, new.file
    return (a is not None and b is not None and old.path == new.path
            and old.format == new.format and old.physical == new.physical
            and old.allocation == new.allocation and a.mtime_ns == b.mtime_ns
            and a.ctime_ns == b.ctime_ns)
