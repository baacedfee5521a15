"""pools/, pools/P/ and the files of a pool (SPEC "The tree")."""

from __future__ import annotations

from typing import Any

from ..core.objects import Pool
from ..errors import NotFound
from ..parsing import parse_pool_command, parse_state, parse_yes_no
from ..state import FileMeta
from . import render
from .files import CommandFile, DocumentFile
from .links import pools_by_path, pools_by_uuid
from .node import Caller, Dir, Generated, LinkTable, Node
from .objdir import ObjectDir

POOL_FILES = ("config.xml", "status.xml", "state", "autostart", "control", "uuid", "type",
              "capacity", "allocation", "available", "error")
LINK_DIRS = ("by-uuid", "by-path")


class PoolsDir(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return [*LINK_DIRS, *sorted(self.t.core.pools)]

    def child(self, name: str, caller: Caller) -> Node:
        if name == "by-uuid":
            return LinkTable(self.t, (*self.path, name), lambda: pools_by_uuid(self.t))
        if name == "by-path":
            return LinkTable(self.t, (*self.path, name), lambda: pools_by_path(self.t))
        pool = self.t.core.pools.get(name)
        if pool is None:
            raise NotFound(name)
        return PoolDir(self.t, (*self.path, name), pool)

    def child_is_current(self, name: str, node: Node) -> bool:
        return getattr(node, "pool", None) is self.t.core.pools.get(name)

    def mtime_ns(self) -> int:
        return self.t.core.pools.names_ns  # moves when a pool is defined or undefined

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        self.t.core.defs.mkdir(name)
        return self.child(name, caller)

    async def rmdir(self, name: str, caller: Caller) -> None:
        node = self.child(name, caller)
        if not isinstance(node, PoolDir):
            await super().rmdir(name, caller)
        await self.t.core.defs.undefine(name)


class _OfPool:
    """Mixin state: the pool a node belongs to."""

    __slots__ = ()
    pool: Pool

    def key(self) -> tuple[Any, ...]:
        return (self.pool,)

    def owner(self) -> Any:
        return self.pool

    def mtime_ns(self) -> int:
        return self.pool.changed_ns

    def pool_alive(self) -> bool:
        return self.t.core.pools.get(self.pool.name) is self.pool  # type: ignore[attr-defined]


class PoolDir(_OfPool, ObjectDir):
    __slots__ = ("pool",)
    attrs_by_stamp = True

    def __init__(self, t, path, pool: Pool) -> None:
        super().__init__(t, path)
        self.pool = pool

    def mtime_ns(self) -> int:
        return self.pool.names_ns  # moves with its names (made, defined), not its figures

    def alive(self) -> bool:
        return self.pool_alive()

    def object_names(self) -> list[str]:
        pool = self.pool
        if not pool.defined:
            if pool.broken:  # its record is unreadable: inaccessible, and why
                return ["config.xml", "state", "error"]
            # a pending pool: its config.xml (and why it was refused)
            return ["config.xml", "error"] if pool.error else ["config.xml"]
        return [*POOL_FILES, "volumes"]

    def object_child(self, name: str) -> Node:
        pool, path = self.pool, (*self.path, name)
        if name == "config.xml":
            return PoolConfig(self.t, path, pool)
        if name == "error" and (pool.defined or pool.error):
            return PoolFile(self.t, path, pool)
        if name == "state" and (pool.defined or pool.broken):
            return PoolState(self.t, path, pool)  # a broken pool's says inaccessible
        if not pool.defined:
            raise NotFound(name)
        if name == "volumes":
            from .volumes import VolumesDir

            return VolumesDir(self.t, path, pool)
        if name == "autostart":
            return PoolAutostart(self.t, path, pool)
        if name == "control":
            return PoolControl(self.t, path, pool)
        if name in POOL_FILES:
            return PoolFile(self.t, path, pool)
        raise NotFound(name)


class PoolFile(_OfPool, Generated):
    """A generated file of a pool: status.xml, uuid, type, the figures, error."""

    __slots__ = ("pool",)

    def __init__(self, t, path, pool: Pool) -> None:
        super().__init__(t, path)
        self.pool = pool

    def alive(self) -> bool:
        return self.pool_alive() and (self.pool.defined or self.name in ("config.xml",
                                                                        "error")
                                      or (self.name == "state" and bool(self.pool.broken)))

    def render(self) -> bytes:
        return render.pool_file(self.t.core, self.pool, self.name)


class PoolConfig(_OfPool, DocumentFile):
    __slots__ = ("pool",)

    def __init__(self, t, path, pool: Pool) -> None:
        super().__init__(t, path)
        self.pool = pool

    def alive(self) -> bool:
        return self.pool_alive()

    def render(self) -> bytes:
        return self.pool.config

    async def apply(self, data: bytes, meta: FileMeta | None) -> None:
        await self.t.core.defs.define(self.pool.name, data, meta)


class _PoolCommandFile(_OfPool, CommandFile):
    __slots__ = ("pool",)

    def __init__(self, t, path, pool: Pool) -> None:
        super().__init__(t, path)
        self.pool = pool

    def alive(self) -> bool:
        return self.pool_alive() and self.pool.defined

    def render(self) -> bytes:
        return render.pool_file(self.t.core, self.pool, self.name)


class PoolState(_PoolCommandFile):
    __slots__ = ()

    def alive(self) -> bool:
        return self.pool_alive() and (self.pool.defined or bool(self.pool.broken))

    def parse(self, line: bytes) -> Any:
        return parse_state(line)

    def check_all(self, cmds: list) -> None:
        self.t.core.life.check_series(self.pool, cmds, True)

    async def run(self, word: str) -> None:
        await self.t.core.life.set_state(self.pool, word)


class PoolAutostart(_PoolCommandFile):
    __slots__ = ()

    def parse(self, line: bytes) -> Any:
        return parse_yes_no(line)

    async def run(self, value: bool) -> None:
        await self.t.core.life.set_autostart(self.pool, value)


class PoolControl(_PoolCommandFile):
    __slots__ = ()

    def parse(self, line: bytes) -> Any:
        return parse_pool_command(line, self.t.core.life.valid_commands(self.pool))

    def check_all(self, cmds: list) -> None:
        self.t.core.life.check_series(self.pool, cmds)

    async def run(self, cmd) -> None:
        await self.t.core.life.command(self.pool, cmd)
