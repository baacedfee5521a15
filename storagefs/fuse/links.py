"""The lookup directories: pools/by-uuid, pools/by-path, volumes/by-key, volumes/by-path.

Each is a table name -> link target, rebuilt only when an object was added, removed or
redefined (the core's ``links_version``), so a lookup never walks every volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFound
from ..names import fit_name, systemd_escape_path
from ..pathrules import normal
from .node import Caller, Dir, LinkTable, Node

if TYPE_CHECKING:
    from .tree import Tree

Table = dict[str, str]


def _cached(t: Tree, which: str, build) -> Table:
    cache = t.link_cache
    version = t.core.links_version
    hit = cache.get(which)
    if hit is not None and hit[0] == version:
        return hit[1]
    table = build()
    cache[which] = (version, table)
    return table


def pools_by_uuid(t: Tree) -> Table:
    return _cached(t, "by-uuid", lambda: {
        p.uuid: f"../{p.name}" for p in t.core.pools.values() if p.defined and p.uuid})


# Link names: escaped paths (systemd-escape --path) of the resolved target, or of the
# normal volume path (so two spellings of one place never make two links), cut to
# NAME_MAX with a hash of the whole (names.fit_name).
def pools_by_path(t: Tree) -> Table:
    return _cached(t, "by-path", lambda: {
        fit_name(systemd_escape_path(p.real_target or normal(p.target))): f"../{p.name}"
        for p in t.core.pools.values() if p.defined and p.target})


def _all_volumes(t: Tree):
    for pool in t.core.pools.values():
        yield from (v for v in pool.volumes.values() if not v.pending)


def volumes_by_key(t: Tree) -> Table:
    return _cached(t, "by-key", lambda: {
        fit_name(systemd_escape_path(normal(v.info.key)) if "/" in v.info.key
                 else v.info.key):
        f"../../pools/{v.pool.name}/volumes/{v.name}" for v in _all_volumes(t)})


def volumes_by_path(t: Tree) -> Table:
    return _cached(t, "vol-by-path", lambda: {
        fit_name(systemd_escape_path(normal(v.info.path))):
        f"../../pools/{v.pool.name}/volumes/{v.name}"
        for v in _all_volumes(t) if v.info.path})


TABLES = {("pools", "by-uuid"): pools_by_uuid, ("pools", "by-path"): pools_by_path,
          ("volumes", "by-key"): volumes_by_key, ("volumes", "by-path"): volumes_by_path}


class VolumeLinksDir(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return ["by-key", "by-path"]

    def child(self, name: str, caller: Caller) -> Node:
        fn = TABLES.get((*self.path, name))
        if fn is None:
            raise NotFound(name)
        return LinkTable(self.t, (*self.path, name), lambda: fn(self.t))
