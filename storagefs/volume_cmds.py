"""Commands written to a volume's ``control`` (virsh vol-* words), snapshots, progress.

A long command runs in the write() that asked for it; meanwhile the volume's
``progress`` file says what runs and how far it is, and other volumes and
listings stay responsive (the work runs in a thread or a child process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .backends.base import VolumeSpec
from .backends.fileops import WIPE_ALGORITHMS, check_snapshot_name
from .commands import Command, parse_command
from .errors import Exists, InvalidArgument, NotFound, NotSupported
from .names import check_name
from .objects import Volume, claim
from .state import StoredVolume
from .units import parse_size

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)


VOLUME_VERBS = ("resize", "clone", "wipe", "snapshot", "revert", "delete-snapshot")


def _clone_args(args: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    rest, opts, names = list(args), {}, []
    while rest:
        a = rest.pop(0)
        if a in ("--format", "--pool"):
            if not rest:
                raise InvalidArgument(f"{a} needs a value")
            opts[a] = rest.pop(0)
        elif a.startswith("--"):
            raise InvalidArgument(f"unknown option {a} (use --format FMT, --pool POOL)")
        else:
            names.append(a)
    if len(names) != 1:
        raise InvalidArgument("usage: clone NEWNAME [--format FMT] [--pool POOL]")
    return check_name(names[0], "volume name"), opts


def check_volume_command(line: bytes | str, valid: list[str] | None = None) -> Command | None:
    """A volume command line, or EINVAL for one that can never be valid."""
    try:
        return _check_volume_command(line, valid)
    except ValueError as exc:  # sizes
        raise InvalidArgument(str(exc)) from None


def _check_volume_command(line: bytes | str, valid: list[str] | None) -> Command | None:
    cmd = parse_command(line)
    if cmd is None:
        return None
    if cmd.verb not in VOLUME_VERBS:
        hint = "; ".join(valid) if valid else ", ".join(VOLUME_VERBS)
        raise InvalidArgument(f"unknown command '{cmd}'; valid: {hint}")
    if cmd.verb == "resize":
        flags = {a for a in cmd.args if a.startswith("--")}
        sizes = [a for a in cmd.args if not a.startswith("--")]
        if flags - {"--shrink", "--delta", "--allocate"} or len(sizes) != 1:
            raise InvalidArgument("usage: resize [--delta] [--allocate] [--shrink] SIZE")
        parse_size(sizes[0])
    elif cmd.verb == "clone":
        _clone_args(cmd.args)
    elif cmd.verb == "wipe":
        if len(cmd.args) > 1:
            raise InvalidArgument(f"usage: wipe [{'|'.join(WIPE_ALGORITHMS)}]")
        if cmd.args and cmd.args[0] not in WIPE_ALGORITHMS:
            raise InvalidArgument(f"unknown wipe algorithm '{cmd.args[0]}'; known: "
                                  f"{', '.join(WIPE_ALGORITHMS)}")
    elif len(cmd.args) != 1:
        raise InvalidArgument(f"usage: {cmd.verb} NAME")
    else:
        check_snapshot_name(cmd.args[0])
    return cmd


class VolumeCommands:
    def valid_volume_commands(self: Manager, vol: Volume) -> list[str]:
        b = vol.pool.backend
        cmds = []
        if b.supports("resize_volume"):
            cmds += ["resize SIZE", "resize --delta SIZE", "resize --allocate SIZE",
                     "resize --shrink SIZE"]
        if b.supports("clone_volume"):
            cmds.append("clone NEWNAME [--format FMT] [--pool POOL]")
        if b.supports("wipe_volume"):
            cmds.append(f"wipe [{'|'.join(WIPE_ALGORITHMS)}]")
        if b.supports("snapshot_volume") and vol.info.format == "qcow2":
            cmds += ["snapshot NAME", "revert NAME", "delete-snapshot NAME"]
        return cmds

    async def volume_command(self: Manager, pool_name: str, name: str, line: bytes) -> None:
        vol = self.volume(pool_name, name)
        with self.recording(vol, "control"):
            cmd = check_volume_command(line, self.valid_volume_commands(vol))
            if cmd is None:
                return
            handlers = {"resize": self._resize, "clone": self._clone, "wipe": self._wipe,
                        "snapshot": self._snapshot_cmd, "revert": self._snapshot_cmd,
                        "delete-snapshot": self._snapshot_cmd}
            await handlers[cmd.verb](vol, cmd)

    def _progress(self: Manager, vol: Volume, what: str) -> Callable[[float], None]:
        last = [-1]

        def report(fraction: float) -> None:
            pct = max(0, min(100, int(fraction * 100)))
            if pct != last[0]:
                last[0] = pct
                vol.progress = f"{what} {pct}%\n"
                self.listener.changed(vol.pool.name, vol.name)
                self.progress_changed(vol)

        vol.progress = f"{what} 0%\n"
        self.progress_changed(vol)
        return report

    def progress_changed(self: Manager, vol: Volume) -> None:
        vol.progress_version += 1
        self.listener.progress(vol.pool.name, vol.name)

    def _done(self: Manager, vol: Volume) -> None:
        vol.progress = ""
        vol.touch()
        self.progress_changed(vol)
        self.listener.changed(vol.pool.name, vol.name)

    @contextlib.asynccontextmanager
    async def _volume_op(self: Manager, vol: Volume, op: str) -> AsyncIterator[None]:
        """One operation at a time on a volume (another is refused at once, EBUSY);
        the pool cannot stop meanwhile."""
        with claim(vol, op):
            if vol.pool.volumes.get(vol.name) is not vol:
                raise NotFound(f"no storage vol with matching name '{vol.name}'")
            self.check_not_stopping(vol.pool)
            vol.pool.busy_volumes += 1
            try:
                yield
            finally:
                vol.pool.busy_volumes -= 1
                self._done(vol)

    async def _resize(self: Manager, vol: Volume, cmd: Command) -> None:
        flags = {a for a in cmd.args if a.startswith("--")}
        size = parse_size(next(a for a in cmd.args if not a.startswith("--")))
        secret = self.volume_secret(vol)
        await self.check_chain(vol)  # qemu-img resize opens the backing chain
        async with self._volume_op(vol, "resize"), \
                self.optional_secret_file(secret) as secret_file:
            pristine = self.pristine(vol)
            cap = vol.info.capacity + size if "--delta" in flags else size
            # the stored document will no longer describe the volume: its record is
            # rewritten first, without it (a state directory that cannot change refuses
            # before the storage changes); the recorded format stays on record
            forget = vol.config is not None and not vol.info.encrypted
            record = None
            if forget and (vol.recorded_format or vol.made):
                record = self.state.prepare_volume(StoredVolume(
                    vol.pool.name, vol.name, None, vol.meta, vol.recorded_format,
                    made=vol.made))
            elif forget:
                record = self.state.stage_delete_volume(vol.pool.name, vol.name)
            try:
                vol.info = await vol.pool.backend.resize_volume(
                    vol.info, cap, shrink="--shrink" in flags, allocate="--allocate" in flags,
                    secret_file=secret_file)
            except BaseException:
                if record is not None:
                    record.abort()
                raise
            if record is not None:
                record.commit()
                vol.config = None
            self.remember_made(vol, pristine)  # storagefs's own resize writes no data

    def renamed_config(self: Manager, vol: Volume, new: str, pool) -> bytes:
        from .xml.volume import format_volume, parse_volume

        vdef = parse_volume(vol.config, vol.pool.definition)
        vdef.name, vdef.key = new, None
        vdef.target.path = None
        return format_volume(vdef, pool.definition).encode()

    def volume_secret(self: Manager, vol: Volume) -> str | None:
        """The secret of an encrypted volume, from the <encryption> of its config.xml."""
        if not vol.info.encrypted or vol.config is None:
            return None
        return self.encryption_secret(vol.config, vol.pool.definition)

    async def _clone(self: Manager, vol: Volume, cmd: Command) -> None:
        new, opts = _clone_args(cmd.args)
        target = self.running_pool(opts.get("--pool", vol.pool.name))
        self.check_not_stopping(target)
        if new in target.volumes or new in target.reserved:
            raise Exists(f"storage volume '{new}' exists already")
        fmt = opts.get("--format", vol.info.format)
        if vol.info.encrypted and fmt != vol.info.format:
            raise NotSupported("an encrypted volume is cloned in its own format (a byte copy "
                               "that keeps its encryption); converting it is not supported")
        spec = VolumeSpec(name=new, format=fmt, capacity=vol.info.capacity)
        await self.check_chain(vol)  # a copy or a convert reads the whole chain
        clone = Volume(target, new, vol.info, recorded_format=fmt)
        if vol.info.encrypted and vol.config is not None:
            # the copy is encrypted with the same secret: keep the <encryption> on record
            clone.config = self.renamed_config(vol, new, target)
        # its record (the format, the document of an encrypted copy) is written before the
        # copy is made, and put in place once it is
        record = self.state.prepare_volume(StoredVolume(target.name, new, clone.config,
                                                        clone.meta, fmt))
        target.reserved.add(new)
        target.busy_volumes += 1
        try:
            async with self._volume_op(vol, f"clone to '{new}'"):
                report = self._progress(vol, "clone")
                clone.info = await target.backend.clone_volume(vol.info, spec, report)
            record.commit()
            target.volumes[new] = clone
        except BaseException:
            record.abort()
            raise
        finally:
            target.reserved.discard(new)
            target.busy_volumes -= 1
        target.touch()
        self.listener.added(target.name, new)
        self.listener.changed(target.name)

    async def _wipe(self: Manager, vol: Volume, cmd: Command) -> None:
        algorithm = cmd.args[0] if cmd.args else "zero"
        await self.check_chain(vol)  # re-making a qcow2 opens its backing file
        async with self._volume_op(vol, "wipe"):
            report = self._progress(vol, "wipe")
            vol.info = await vol.pool.backend.wipe_volume(vol.info, algorithm, report)

    async def _snapshot_cmd(self: Manager, vol: Volume, cmd: Command) -> None:
        op = {"snapshot": "create", "revert": "revert", "delete-snapshot": "delete"}[cmd.verb]
        await self.snapshot_op(vol, op, cmd.args[0])

    async def snapshot_op(self: Manager, vol: Volume, op: str, name: str) -> None:
        if vol.info.format != "qcow2":
            raise NotSupported(f"internal snapshots need qcow2; '{vol.name}' is "
                               f"{vol.info.format}")
        check_snapshot_name(name)
        what = {"create": "snapshot", "revert": "revert", "delete": "delete-snapshot"}[op]
        if op == "create" and vol.busy == f"snapshot {name}":
            raise Exists(f"snapshot '{name}' already exists")  # being made right now
        async with self._volume_op(vol, f"{what} {name}"):
            vol.info = await vol.pool.backend.volume_details(vol.info)  # current snapshots
            await self.check_chain(vol)  # qemu-img snapshot opens the backing chain
            taken = {s.name for s in vol.info.snapshots}
            if op == "create" and name in taken:
                raise Exists(f"snapshot '{name}' already exists")
            if op != "create" and name not in taken:
                raise NotFound(f"no snapshot '{name}' in volume '{vol.name}'")
            vol.info = await vol.pool.backend.snapshot_volume(vol.info, op, name)

    async def mkdir_snapshot(self: Manager, pool: str, vol: str, name: str) -> None:
        v = self.volume(pool, vol)
        with self.recording(v, f"snapshot {name}"):
            await self.snapshot_op(v, "create", name)

    async def rmdir_snapshot(self: Manager, pool: str, vol: str, name: str) -> None:
        v = self.volume(pool, vol)
        with self.recording(v, f"delete-snapshot {name}"):
            await self.snapshot_op(v, "delete", name)
