"""Where an image's chain leads (SPEC "Never trust guest bytes").

qemu opens more than the image: its backing file (and that one's backing ...), a
qcow2 external data file, the extents of a vmdk descriptor. In a file found in a
pool those names are bytes that whoever wrote the file chose. An operation that
hands the image to qemu-img (clone, convert, resize, snapshot, wipe, map) may only
follow a chain whose every file is in a pool; the first file outside is reported,
and the operation refused, unless a document names it.

The walk opens no file outside the pools: ``qemu-img info`` opens neither backing
nor data files, vmdk descriptors are read here (qemu-img info would open their
extents), and no symlink is followed. A file is in a pool when the name qemu will
open is a regular file directly in a file pool's directory, or is the path of a
block pool's volume.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from .backends.base import VolumeInfo
from .backends.filevol import FileVolumes
from .backends.imagefmt import probe_header, vmdk_extents
from .errors import StorageError
from .pathrules import normal

#: a chain longer than this is not followed (qemu's own limit is similar)
MAX_DEPTH = 16


@dataclass
class Places:
    """Where pools keep their volumes: file pools' directories, block volumes' paths."""

    dirs: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)

    def holds(self, path: str) -> bool:
        """True when qemu opening ``path`` opens a file of a pool (no '..', no symlink)."""
        if not path.startswith("/") or path != os.path.normpath(path):
            return False
        if path in self.volumes:
            return True
        if os.path.dirname(path) not in self.dirs:
            return False
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False


async def _links(path: str, fmt: str) -> list[tuple[str, str | None]]:
    """The files that the image at ``path`` (in a pool) names, with their formats."""
    if fmt == "raw":
        return []
    if fmt == "vmdk":
        extents = vmdk_extents(path)
        if extents is None:
            raise StorageError(f"the vmdk descriptor of '{path}' cannot be read")
        return [(e, None) for e in extents if e != path]
    info = VolumeInfo(name=os.path.basename(path), path=path, key=path, format=fmt)
    await FileVolumes(os.path.dirname(path))._qemu_info(info, strict=True)
    out: list[tuple[str, str | None]] = []
    if info.backing_path:
        out.append((info.backing_path, info.backing_format))
    out += [(f, "raw") for f in info.data_files]
    return out


class ChainLoop(StorageError):
    """A backing chain that comes back to a file already in it (a self-reference, or
    A backed by B backed by A): qemu would follow it without end."""

    default_errno = errno.ELOOP


def _identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a file of a pool: the same file under two names (a hard
    link) is the same link of the chain."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _loop(names: list[str]) -> ChainLoop:
    shown = " -> ".join(f"'{os.path.basename(n) or n}'" for n in names)
    if len(names) == 2:
        return ChainLoop(f"the backing chain refers to itself: {shown}")
    return ChainLoop(f"the backing chain loops: {shown}")


async def escape(info: VolumeInfo, places: Places, named: set[str],
                 start: str | None = None) -> str | None:
    """The first file in ``info``'s chain that is in no pool and that no document names
    (``named``), or None when the whole chain stays in the pools. ChainLoop (ELOOP) when
    the chain comes back to a file already in it, ``info``'s own file (or ``start``: the
    volume a new backing store is for) included."""
    root = info.path or start
    # each entry: (path, format, the files before it on its way from the root)
    first: list[str] = [root] if root else []
    todo: list[tuple[str, str | None, list[str]]] = []
    if info.backing_path:
        todo.append((info.backing_path, info.backing_format, first))
    todo += [(f, "raw", first) for f in info.data_files]
    ids = {p: _identity(p) for p in first}
    walked: set[str] = set()
    while todo:
        path, fmt, before = todo.pop(0)
        if path in before or normal(path) in before:
            raise _loop([*before[before.index(path if path in before else normal(path)):],
                         path])
        if not places.holds(path) or len(before) > MAX_DEPTH:
            if path in named or normal(path) in named:
                continue  # a document names it (a block device, say): the user vouches
            return path
        ident = _identity(path)
        same = [p for p in before if ident is not None and ids.get(p) == ident]
        if same:
            raise _loop([*before[before.index(same[0]):], path])
        ids[path] = ident
        if path in walked:
            continue  # reached again on another branch (a vmdk naming an extent twice)
        walked.add(path)
        # without a recorded format qemu probes the backing file's header: so do we
        try:
            links = await _links(path, fmt or probe_header(path)[0])
        except StorageError:
            return path  # what it names cannot be known: it is not followed
        todo += [(p, f, [*before, path]) for p, f in links]
    return None
