"""What the FUSE layer keeps beside the core: scratch files and directories, names an
unlinking process no longer sees, modes and times set on generated files, and the
root of the node tree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..core.objects import now_ns
from ..errors import NotFound
from ..state import FileMeta
from .handles import Scratch
from .node import Caller, Dir, Link, Node, Static

Path = tuple[str, ...]
#: how long a name unlinked by a process stays hidden from that process (GNU install
#: unlinks config.xml, then creates it anew with O_EXCL; vim renames it away first)
HIDE_SECONDS = 5.0


@dataclass(eq=False)
class ScratchDir:
    """A scratch directory (Puppet's lock directory): scratch files only, in memory
    (they are kept in ``Tree.scratch`` under the directory's path)."""

    meta: FileMeta = field(default_factory=lambda: FileMeta(mode=0o755))

    def __post_init__(self) -> None:
        t = now_ns()
        self.meta.atime_ns = self.meta.mtime_ns = self.meta.ctime_ns = t


def tgid(pid: int) -> int:
    """The process of a FUSE request's thread id (what a whole tool does counts)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


class Tree:
    """Shared state of the node tree; ``core`` is the registry the nodes answer from."""

    def __init__(self, core: Any, readme: bytes) -> None:
        self.core = core
        self.readme = readme
        self.mounted_ns = now_ns()
        #: per object directory: its scratch entries (files and directories)
        self.scratch: dict[Path, dict[str, Scratch | ScratchDir]] = {}
        #: per file path: mode, owner and times set by chmod/chown/touch
        self.file_meta: dict[Path, FileMeta] = {}
        #: times set on directories (rsync -a), kept while mounted: (atime, mtime, when)
        self.dir_times: dict[Path, tuple[int, int, int]] = {}
        #: per file path: pid -> deadline while that process does not see the name
        self._hidden: dict[Path, dict[int, float]] = {}
        #: bumped by every change of file_meta, dir_times or hidden names: part of the
        #: stamp under which a directory's attributes are cached (attrs.py)
        self.attrs_gen = 0
        #: by-* link tables with the core's links_version they were built at
        self.link_cache: dict[str, tuple[int, dict[str, str]]] = {}

    # ---- names hidden from the process that unlinked them ---------------------------
    def hide(self, path: Path, pid: int) -> None:
        self.attrs_gen += 1
        self._hidden.setdefault(path, {})[tgid(pid)] = time.monotonic() + HIDE_SECONDS

    def hidden_from_anyone(self, path: Path) -> bool:
        """While a name is hidden from a process, the kernel must ask again at every
        lookup: a dentry cached for another process would fail its O_EXCL create."""
        return path in self._hidden

    def hidden(self, path: Path, pid: int) -> bool:
        who = self._hidden.get(path)
        if not who:
            return False
        pid = tgid(pid)
        deadline = who.get(pid)
        if deadline is None:
            return False
        if deadline < time.monotonic():
            del who[pid]
            if not who:
                del self._hidden[path]
                self.attrs_gen += 1
            return False
        return True

    def unhide(self, path: Path, pid: int | None = None) -> None:
        who = self._hidden.get(path)
        if who is None:
            return
        if pid is None:
            who.clear()
        else:
            who.pop(tgid(pid), None)
        if not who:
            del self._hidden[path]
            self.attrs_gen += 1

    # ---- scratch entries -----------------------------------------------------------
    def scratch_of(self, directory: Path) -> dict[str, Scratch | ScratchDir]:
        return self.scratch.get(directory, {})

    def add_scratch(self, directory: Path, name: str, entry: Scratch | ScratchDir) -> None:
        self.scratch.setdefault(directory, {})[name] = entry

    def drop_scratch(self, directory: Path, name: str) -> Scratch | ScratchDir | None:
        entries = self.scratch.get(directory)
        if not entries:
            return None
        entry = entries.pop(name, None)
        if not entries:
            del self.scratch[directory]
        if isinstance(entry, ScratchDir):
            self.scratch.pop((*directory, name), None)
        return entry

    def forget_under(self, path: Path) -> None:
        """An object directory went away: its scratch entries, modes and times go too
        (a new object of the same name starts clean)."""
        n = len(path)
        self.attrs_gen += 1
        for table in (self.scratch, self.file_meta, self.dir_times, self._hidden):
            for key in [k for k in table if k[:n] == path]:
                del table[key]

    def root(self) -> Node:
        return Root(self, ())


class Root(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        devices = ["devices"] if self.t.core.devices is not None else []
        return ["README", *devices, "events", "metrics", "metrics.prom", "pools", "secrets",
                "sources", "volumes"]

    def child(self, name: str, caller: Caller) -> Node:
        from .devices import DevicesDir
        from .events import EventsFile
        from .links import VolumeLinksDir
        from .metrics import METRICS_FILE, MetricsFile
        from .pools import PoolsDir
        from .secrets import SecretsDir
        from .sources import SourcesDir

        if name == "README":
            return Static(self.t, ("README",), self.t.readme)
        if name == "pools":
            return PoolsDir(self.t, ("pools",))
        if name == "volumes":
            return VolumeLinksDir(self.t, ("volumes",))
        if name == "secrets":
            return SecretsDir(self.t, ("secrets",))
        if name == "sources":
            return SourcesDir(self.t, ("sources",))
        if name == "devices" and self.t.core.devices is not None:
            return DevicesDir(self.t, ("devices",))
        if name == "events":
            return EventsFile(self.t, ("events",))
        if name == METRICS_FILE:
            return MetricsFile(self.t, (METRICS_FILE,))
        if name == "metrics":
            return Link(self.t, ("metrics",), METRICS_FILE)
        raise NotFound(name)
