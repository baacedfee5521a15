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


async def escape(info: VolumeInfo, places: Places, named: set[str]) -> str | None:
    """The first file in ``info``'s chain that is in no pool and that no document names
    (``named``), or None when the whole chain stays in the pools."""
    todo: list[tuple[str, str | None, int]] = []
    if info.backing_path:
        todo.append((info.backing_path, info.backing_format, 1))
    todo += [(f, "raw", 1) for f in info.data_files]
    seen: set[str] = set()
    while todo:
        path, fmt, depth = todo.pop(0)
        if not places.holds(path) or depth > MAX_DEPTH:
            if path in named or normal(path) in named:
                continue  # a document names it (a block device, say): the user vouches
            return path
        if path in seen:
            continue
        seen.add(path)
        # without a recorded format qemu probes the backing file's header: so do we
        try:
            links = await _links(path, fmt or probe_header(path)[0])
        except StorageError:
            return path  # what it names cannot be known: it is not followed
        todo += [(p, f, depth + 1) for p, f in links]
    return None
