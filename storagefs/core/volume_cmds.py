"""Commands written to a volume's ``control`` (virsh vol-* words, parsed in parsing.py),
snapshots, and progress.

A long command runs in the write() that asked for it; meanwhile the volume's
``progress`` file says what runs and how far it is, another operation on the volume
is refused at once (EBUSY, the running one named), and other volumes and listings
stay responsive (the work runs in a thread or a child process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio

from ..backends.base import QEMU_SOURCE, VolumeSpec
from ..errors import Exists, NotFound, NotSupported, StorageError
from ..parsing import (
    CLONE_USAGE,
    Clone,
    DeleteVolume,
    Resize,
    Snapshot,
    VolumeCommand,
    Wipe,
    check_snapshot_name,
)
from ..state import StoredVolume
from ..xml.volume import format_volume, parse_volume
from .events import SNAPSHOT_EVENTS
from .objects import Volume, claim

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)


#: what each command leaves when a signal cuts it short (said in the EINTR error line)
CUT_WIPE = ("the wipe stopped part way: the volume may be partly wiped (a wipe cannot "
            "be undone); write the wipe again to finish it")
#: errnos of refusals made before anything is written (a wipe refused so is not partial)
REFUSED_BEFORE = (errno.EINVAL, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT,
                  errno.EBUSY, errno.ELOOP)
CUT_CLONE = "the clone stopped; its partial copy was removed and no volume was added"
CUT_RESIZE = ("the resize stopped part way: the capacity may have changed (the "
              "capacity file shows it now)")
CUT_SNAPSHOT = "stopped part way: snapshots/ shows what is there now"


class VolumeCommands:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def valid_commands(self, vol: Volume) -> list[str]:
        if vol.pending:
            return []
        b, policy = vol.pool.backend, vol.pool.backend.policy
        cmds = []
        if b.supports("resize_volume"):
            cmds += ["resize SIZE", "resize --delta SIZE", "resize --allocate SIZE",
                     "resize --shrink SIZE"]
        if b.supports("clone_volume"):
            cmds.append(CLONE_USAGE if b.linked_clones else
                        CLONE_USAGE.replace(" [--linked]", ""))
        if b.supports("wipe_volume") and policy.wipe_algorithms:
            cmds.append(f"wipe [{'|'.join(policy.wipe_algorithms)}]")
        if b.supports("snapshot_volume") and policy.snapshots_for(vol.info.format):
            cmds += ["snapshot NAME", "revert NAME", "delete-snapshot NAME"]
        if b.purges_snapshots:
            cmds.append("delete [--purge-snapshots]")
        return cmds

    async def command(self, vol: Volume, cmd: VolumeCommand) -> None:
        if isinstance(cmd, DeleteVolume):  # rmdir, recorded as such
            await self.reg.vols.delete(vol, purge_snapshots=cmd.purge_snapshots)
            return
        with self.reg.rec.recording(vol, "control"):
            if vol.pending:
                raise NotFound(f"volume '{vol.name}' is pending: write its config.xml first")
            if isinstance(cmd, Resize):
                await self.resize(vol, cmd)
            elif isinstance(cmd, Clone):
                await self.clone(vol, cmd)
            elif isinstance(cmd, Wipe):
                await self.wipe(vol, cmd)
            else:
                await self.snapshot(vol, cmd.op, cmd.name)

    # ---- progress -----------------------------------------------------------------
    def _progress(self, vol: Volume, what: str) -> Callable[[float], None]:
        last = [-1]
        listener = self.reg.listener

        def report(fraction: float) -> None:
            pct = max(0, min(100, int(fraction * 100)))
            if pct != last[0]:
                last[0] = pct
                vol.progress = f"{what} {pct}%\n"
                listener.changed(vol.pool.name, vol.name)
                self.progress_changed(vol)

        vol.progress = f"{what} 0%\n"
        self.progress_changed(vol)
        return report

    def progress_changed(self, vol: Volume) -> None:
        vol.progress_version += 1
        self.reg.listener.progress(vol.pool.name, vol.name)

    async def _done(self, vol: Volume) -> None:
        vol.progress = ""
        vol.touch()
        self.progress_changed(vol)
        self.reg.listener.changed(vol.pool.name, vol.name)
        await self.reg.index.settle(vol.pool)

    @contextlib.asynccontextmanager
    async def _op(self, vol: Volume, op: str, left: str) -> AsyncIterator[None]:
        """One operation at a time on a volume (another is refused at once, EBUSY);
        the pool cannot stop meanwhile. ``left``: what the operation leaves when a
        signal cuts it short (the writer's EINTR line says it; a wipe is never undone)."""
        with claim(vol, op):
            if vol.pool.volumes.get(vol.name) is not vol:
                raise NotFound(f"no storage vol with matching name '{vol.name}'")
            self.reg.check_not_stopping(vol.pool)
            vol.pool.runner.check()
            vol.pool.busy_volumes += 1
            try:
                with self.reg.rec.if_cut_short(vol, left):
                    async with vol.pool.backend.volume_lock(vol.info, op):
                        yield
            finally:
                vol.pool.busy_volumes -= 1
                with trio.CancelScope(shield=True):
                    await self._done(vol)

    def secret_of(self, vol: Volume) -> str | None:
        """The secret of an encrypted volume, from the <encryption> of its config.xml."""
        if not vol.info.encrypted or vol.config is None:
            return None
        return self.reg.vols.secret_of(vol.config, vol.pool)

    @staticmethod
    def _secret_arg(secret_file: str | None) -> dict[str, str]:
        """``secret_file=`` for a backend call, only when there is one (backends of
        storage without encryption need not take it)."""
        return {"secret_file": secret_file} if secret_file else {}

    # ---- the commands ------------------------------------------------------------------
    async def resize(self, vol: Volume, cmd: Resize) -> None:
        reg = self.reg
        secret = self.secret_of(vol)
        await reg.chains.check(vol)  # qemu-img resize opens the backing chain
        async with self._op(vol, "resize", CUT_RESIZE), \
                reg.secrets.optional_file(secret) as secret_file:
            pristine = await reg.vols.pristine(vol)
            cap = vol.info.capacity + cmd.size if cmd.delta else cmd.size
            # the stored document will no longer describe the volume: its record is
            # rewritten first, without it (a state directory that cannot change refuses
            # before the storage changes); the recorded format stays on record
            forget = vol.config is not None and not vol.info.encrypted
            record = None
            if forget and (vol.recorded_format or vol.made):
                record = reg.state.prepare_volume(reg.vols.record_of(vol, config=None))
            elif forget:
                record = reg.state.stage_delete_volume(vol.pool.name, vol.name)
            try:
                vol.info = await vol.pool.backend.resize_volume(
                    vol.info, cap, shrink=cmd.shrink, allocate=cmd.allocate,
                    secret_file=secret_file)
            except BaseException:
                if record is not None:
                    record.abort()
                raise
            if record is not None:
                record.commit()
                vol.config = None
            reg.events.of(vol, "resized", f"capacity={vol.info.capacity}")
            await reg.vols.remember_made(vol, pristine)  # storagefs's own resize writes no data

    @staticmethod
    def renamed_config(vol: Volume, new: str, pool) -> bytes:
        vdef = parse_volume(vol.config, vol.pool.definition)
        vdef.name, vdef.key = new, None
        vdef.target.path = None
        return format_volume(vdef, pool.definition).encode()

    async def clone(self, vol: Volume, cmd: Clone) -> None:
        reg, new = self.reg, cmd.new
        target = reg.running_pool(cmd.pool or vol.pool.name)
        reg.check_not_stopping(target)
        if new in target.volumes or new in target.reserved:
            raise Exists(f"storage volume '{new}' exists already")
        fmt = cmd.format or vol.info.format
        if vol.info.encrypted and fmt != vol.info.format:
            raise NotSupported("an encrypted volume is cloned in its own format (a byte copy "
                               "that keeps its encryption); converting it is not supported")
        if cmd.linked and (target is not vol.pool or not target.backend.linked_clones):
            raise NotSupported(f"a linked clone is made in the volume's own pool, by "
                               f"pool types that have them (rbd); not '{target.name}' "
                               f"({target.definition.type})")
        spec = VolumeSpec(name=new, format=fmt, capacity=vol.info.capacity,
                          options={"linked": "yes"} if cmd.linked else {})
        await reg.chains.check(vol)  # a copy or a convert reads the whole chain
        clone = Volume(target, new, vol.info, recorded_format=fmt)
        if vol.info.encrypted and vol.config is not None:
            # the copy is encrypted with the same secret: keep the <encryption> on record
            clone.config = self.renamed_config(vol, new, target)
        # its record (the format, the document of an encrypted copy) is written before the
        # copy is made, and put in place once it is
        record = reg.state.prepare_volume(StoredVolume(target.name, new, clone.config,
                                                       clone.file_meta(), fmt))
        target.reserved.add(new)
        target.busy_volumes += 1
        try:
            async with self._op(vol, f"clone to '{new}'", CUT_CLONE):
                # the source's pool is checked too: its target may have been replaced
                await vol.pool.backend.check_storage()
                report = self._progress(vol, "clone")
                src = vol.info
                # a network volume into another pool: its qemu URL, while the copy runs
                network = target is not vol.pool and src.path is None
                async with (vol.pool.backend.qemu_source(src) if network
                            else contextlib.nullcontext()) as url:
                    if url:
                        src = dataclasses.replace(src, options={**src.options,
                                                                QEMU_SOURCE: url})
                    clone.info = await target.backend.clone_volume(src, spec, report)
            record.commit()
            target.volumes[new] = clone
        except BaseException:
            record.abort()
            raise
        finally:
            target.reserved.discard(new)
            target.busy_volumes -= 1
        target.touch()
        reg.events.of(vol, "cloned", f"to={target.name}/{new}")
        reg.events.of(clone, "created", f"format={fmt} from={vol.pool.name}/{vol.name}")
        reg.listener.added(target.name, new)
        reg.listener.changed(target.name)
        await reg.index.settle(target)

    async def wipe(self, vol: Volume, cmd: Wipe) -> None:
        algorithms = vol.pool.backend.policy.wipe_algorithms
        if cmd.algorithm not in algorithms:
            raise NotSupported(f"wipe algorithm '{cmd.algorithm}' is not supported for pools "
                               f"of type '{vol.pool.definition.type}' (supported: "
                               f"{', '.join(algorithms) or 'none'})")
        await self.reg.chains.check(vol)  # re-making a qcow2 opens its backing file
        secret = self.secret_of(vol)  # an encrypted image is re-made with its secret
        async with self._op(vol, "wipe", CUT_WIPE), \
                self.reg.secrets.optional_file(secret) as secret_file:
            report = self._progress(vol, "wipe")
            try:
                vol.info = await vol.pool.backend.wipe_volume(
                    vol.info, cmd.algorithm, report, **self._secret_arg(secret_file))
            except StorageError as exc:  # a failure part way is no undo either
                if exc.errno not in REFUSED_BEFORE:
                    exc.reason = f"{exc.reason}; {CUT_WIPE}"
                    exc.args = (exc.reason,)
                raise
            self.reg.events.of(vol, "wiped", f"algorithm={cmd.algorithm}")

    async def snapshot(self, vol: Volume, op: str, name: str) -> None:
        kinds = vol.pool.backend.policy.snapshots_for(vol.info.format)
        if not kinds:
            raise NotSupported(f"internal snapshots need qcow2; '{vol.name}' is "
                               f"{vol.info.format}" if vol.info.type == "file" else
                               f"snapshots are not supported for volumes of pools of type "
                               f"'{vol.pool.definition.type}'")
        check_snapshot_name(name)
        what = str(Snapshot(op, name))
        if op == "create" and vol.busy == f"snapshot {name}":
            raise Exists(f"snapshot '{name}' already exists")  # being made right now
        async with self._op(vol, what, f"'{what}' {CUT_SNAPSHOT}"):
            vol.info = await vol.pool.backend.volume_details(vol.info)  # current snapshots
            await self.reg.chains.check(vol)  # qemu-img snapshot opens the backing chain
            taken = {s.name for s in vol.info.snapshots}
            if op == "create" and name in taken:
                raise Exists(f"snapshot '{name}' already exists")
            if op != "create" and name not in taken:
                raise NotFound(f"no snapshot '{name}' in volume '{vol.name}'")
            async with self.reg.secrets.optional_file(self.secret_of(vol)) as secret_file:
                vol.info = await vol.pool.backend.snapshot_volume(
                    vol.info, op, name, **self._secret_arg(secret_file))
            self.reg.events.of(vol, SNAPSHOT_EVENTS[op], f"name={name}")

    async def mkdir_snapshot(self, vol: Volume, name: str) -> None:
        with self.reg.rec.recording(vol, f"snapshot {name}"):
            await self.snapshot(vol, "create", name)

    async def rmdir_snapshot(self, vol: Volume, name: str) -> None:
        with self.reg.rec.recording(vol, f"delete-snapshot {name}"):
            await self.snapshot(vol, "delete", name)
