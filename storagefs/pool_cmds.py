"""Commands for pools: start, stop, refresh, build, delete; the state and autostart files.

Each runs under the pool's lock; a pool whose storage disappears while started
becomes ``inaccessible`` (its volumes unlisted) until a refresh finds it again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .backends.base import VolumeSpec
from .commands import Command, parse_command, parse_yes_no
from .errors import Busy, InvalidArgument, StorageError
from .names import check_name
from .objects import DEGRADED, INACCESSIBLE, INACTIVE, RUNNING, Pool, claim
from .units import parse_size
from .xml.pooltypes import POOL_TYPE_INFO

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)


POOL_VERBS = ("start", "stop", "refresh", "build", "delete", "create")
CREATE_USAGE = "create NAME CAPACITY [--format F] [--allocation A]"


@dataclass(frozen=True)
class CreateArgs:
    """``create NAME CAPACITY [--format F] [--allocation A]`` (virsh vol-create-as)."""

    name: str
    capacity: int
    format: str | None = None
    allocation: int | None = None


def parse_create(args: tuple[str, ...]) -> CreateArgs:
    """The arguments of a create line, all checked (EINVAL with the reason otherwise).
    Options may come anywhere and as ``--opt=value``; each at most once."""
    from .volume_ops import check_allocation

    words, opts = [], {}
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            words.append(word)
            continue
        key, eq, value = word.partition("=")
        if key not in ("--format", "--allocation"):
            raise InvalidArgument(f"unknown option {key!r}; usage: {CREATE_USAGE}")
        if not eq:
            if not rest:
                raise InvalidArgument(f"{key} needs a value; usage: {CREATE_USAGE}")
            value = rest.pop(0)
        if key in opts:
            raise InvalidArgument(f"{key} given twice")
        opts[key] = value
    if len(words) != 2:
        raise InvalidArgument(f"usage: {CREATE_USAGE}")
    name = check_name(words[0], "volume name")
    try:
        capacity = parse_size(words[1])
        allocation = parse_size(opts["--allocation"]) if "--allocation" in opts else None
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    fmt = opts.get("--format")
    if fmt is not None and (not fmt or not fmt.isprintable() or len(fmt) > 64):
        raise InvalidArgument(f"bad format {fmt!r}")
    check_allocation(capacity, allocation)
    return CreateArgs(name, capacity, fmt, allocation)


def check_pool_command(line: bytes | str, valid_now: list[str] | None = None) -> Command | None:
    """A pool command line, or EINVAL for one that can never be valid (no state needed:
    every line of a write is checked before any of them runs)."""
    cmd = parse_command(line)
    if cmd is None:
        return None
    if cmd.verb not in POOL_VERBS:
        hint = f"valid now: {', '.join(valid_now) or 'none'}" if valid_now is not None else \
            f"commands: start, stop, refresh, build [overwrite], delete, {CREATE_USAGE}"
        raise InvalidArgument(f"unknown command '{cmd}'; {hint}")
    if cmd.verb == "create":
        parse_create(cmd.args)
    elif cmd.verb == "build":
        if cmd.args not in ((), ("overwrite",), ("--overwrite",)):
            raise InvalidArgument(f"build takes only 'overwrite', not '{' '.join(cmd.args)}'")
    elif cmd.args:
        raise InvalidArgument(f"{cmd.verb} takes no arguments")
    return cmd


def check_state_word(text: bytes | str) -> str:
    word = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).strip()
    if word not in ("running", "inactive"):
        raise InvalidArgument(f"write 'running' or 'inactive' to state, not {word[:80]!r}")
    return word


class PoolCommands:
    def check_pool_lines(self: Manager, pool: Pool, lines: list[bytes],
                         state_file: bool = False) -> None:
        """Refuse a series of commands when one needs a state that the pool will not be in
        by then (EBUSY), or names a volume format the pool cannot have (EINVAL), before
        any of them runs."""
        if not pool.defined:
            return
        if not state_file:
            for line in lines:
                cmd = check_pool_command(line)
                if cmd is not None and cmd.verb == "create":
                    self.create_spec(pool, parse_create(cmd.args))
        if len(lines) < 2:
            return
        active = pool.active
        for line in lines:
            if state_file:
                active = check_state_word(line) == "running"
                continue
            cmd = check_pool_command(line)
            if cmd is None:
                continue
            if not active and cmd.verb == "create":
                raise Busy(f"'{cmd}' after the lines before it: storage pool '{pool.name}' "
                           "would not be active")
            if active and cmd.verb in ("start", "build", "delete"):
                raise Busy(f"'{cmd}' after the lines before it: storage pool '{pool.name}' "
                           "would be active")
            if not active and cmd.verb in ("stop", "refresh"):
                raise Busy(f"'{cmd}' after the lines before it: storage pool '{pool.name}' "
                           "would not be active")
            active = {"start": True, "stop": False}.get(cmd.verb, active)

    def valid_pool_commands(self: Manager, pool: Pool) -> list[str]:
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

    async def pool_command(self: Manager, name: str, line: bytes | str) -> None:
        pool = self.pool(name)
        with self.recording(pool, "control"):
            cmd = check_pool_command(line, self.valid_pool_commands(pool))
            if cmd is None:
                return
            self.need_definition(pool)
            await self._run_pool_command(pool, cmd)

    def create_spec(self: Manager, pool: Pool, args: CreateArgs) -> VolumeSpec:
        """What a create line makes: the pool's default format unless --format names one
        of the pool type's volume formats (EINVAL for another)."""
        formats = POOL_TYPE_INFO[pool.definition.type].volume_formats
        fmt = args.format
        if fmt is not None and fmt not in formats and not (fmt == "raw" and not formats):
            known = ", ".join(f for f in formats if f != "none") or "raw only"
            raise InvalidArgument(f"unknown volume format '{fmt}' for a pool of type "
                                  f"'{pool.definition.type}' (formats: {known})")
        if fmt is None or (fmt == "raw" and not formats):
            fmt = self.default_spec(pool, args.name).format
        return VolumeSpec(name=args.name, format=fmt, capacity=args.capacity,
                          allocation=args.allocation)

    async def _run_pool_command(self: Manager, pool: Pool, cmd: Command) -> None:
        verbs = {"start": self._start, "stop": self._stop, "refresh": self._refresh,
                 "delete": self._delete}
        if cmd.verb == "create":
            spec = self.create_spec(pool, parse_create(cmd.args))
            if not pool.active:
                raise Busy(f"storage pool '{pool.name}' is not active")
            await self.make_volume(pool, spec.name, spec)
            return
        if cmd.verb == "build":
            await self._build(pool, overwrite=bool(cmd.args))
        else:
            await verbs[cmd.verb](pool)

    async def _start(self: Manager, pool: Pool, record: bool = True) -> None:
        """Start, and record that the pool runs (unless ``record`` is False: at start-up
        the record already says so); a refused save stops it again."""
        with claim(pool, "start"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is already active")
            # again: a directory on the way may have become a symlink since the define
            await self.check_pool_paths(pool, pool.definition)
            save = record and not pool.stored_active
            if save:
                self.state.check_writable()
            await pool.backend.start()
            try:
                await self._load_volumes(pool)
                if save:
                    self._save(pool, active=True)
            except BaseException:
                pool.volumes.clear()  # never listed: the pool was not active yet
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await pool.backend.stop()
                raise
            self._apply_health(pool, "start")
            pool.touch()
            self.watch(pool)
        self.listener.changed(pool.name)

    async def _stop(self: Manager, pool: Pool) -> None:
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
                self._save(pool, active=False)  # first: a refused save changes nothing
            try:
                await self.cancel_details(pool)
                await pool.backend.stop()
            except BaseException:
                if was_recorded:  # still running: the record says so again
                    try:
                        self._save(pool, active=True)
                    except StorageError as exc:
                        log.error("pool %s still runs but its record says inactive: %s",
                                  pool.name, exc.reason)
                raise
            self.unwatch(pool)
            pool.state = INACTIVE
            names = list(pool.volumes)
            pool.volumes.clear()
            pool.touch()
        for vol in names:
            self.listener.removed(pool.name, vol)
        self.listener.changed(pool.name)

    async def _refresh(self: Manager, pool: Pool) -> None:
        with claim(pool, "refresh"):
            if not pool.active:
                raise Busy(f"storage pool '{pool.name}' is not active")
            try:
                await self._load_volumes(pool, deep=True)
            except StorageError as exc:
                self._lost_storage(pool, exc)
                raise
            if pool.state == INACCESSIBLE:
                self.watch(pool)
            self._apply_health(pool, "refresh")
            pool.touch()
        self.listener.changed(pool.name)

    def _apply_health(self: Manager, pool: Pool, op: str) -> None:
        """running, or degraded when the backend says why (e.g. LVs cannot be activated)."""
        from .manager import error_line

        hook = getattr(pool.backend, "degraded_reason", None)
        reason = hook() if hook else None
        if reason:
            if pool.state != DEGRADED:
                log.warning("pool %s is degraded: %s", pool.name, reason)
            pool.state = DEGRADED
            pool.error = error_line(op, reason)
        else:
            pool.state = RUNNING

    def _lost_storage(self: Manager, pool: Pool, exc: StorageError) -> None:
        """The storage of a started pool is gone: inaccessible, volumes unlisted."""
        if pool.state != INACCESSIBLE:
            log.error("pool %s: storage became inaccessible: %s", pool.name, exc.reason)
        pool.state = INACCESSIBLE
        self.unwatch(pool)
        names = list(pool.volumes)
        pool.volumes.clear()
        for vol in names:
            self.listener.removed(pool.name, vol)

    async def _build(self: Manager, pool: Pool, overwrite: bool = False) -> None:
        with claim(pool, "build"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is already active")
            await self.check_pool_paths(pool, pool.definition)
            await pool.backend.build(overwrite=overwrite)
            pool.touch()
        self.listener.changed(pool.name)

    async def _delete(self: Manager, pool: Pool) -> None:
        with claim(pool, "delete"):
            if pool.active:
                raise Busy(f"storage pool '{pool.name}' is still active")
            await pool.backend.delete()
            pool.touch()
        self.listener.changed(pool.name)

    async def set_pool_state(self: Manager, name: str, text: bytes | str) -> None:
        pool = self.pool(name)
        with self.recording(pool, "state"):
            word = check_state_word(text)
            self.need_definition(pool)
            if word == "running" and not pool.active:
                await self._start(pool)
            elif word == "inactive" and pool.active:
                await self._stop(pool)

    async def set_autostart(self: Manager, name: str, text: bytes | str) -> None:
        pool = self.pool(name)
        with self.recording(pool, "autostart"):
            value = parse_yes_no(text)
            self.need_definition(pool)
            if value != pool.autostart:
                self._save(pool, autostart=value)
                pool.autostart = value
                pool.touch()
        self.listener.changed(name)

