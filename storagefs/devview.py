"""The devices/ part of the tree, served from the live DeviceIndex (dict lookups only).

    devices/NAME/{device.xml, one value per file, parent -> ../PARENT}
    devices/by-class/CLASS/NAME -> ../../NAME
    devices/by-devnode/NODE -> ../NAME      (nested /dev paths with '!' for '/')
"""

from __future__ import annotations

from .devices import DeviceIndex
from .errors import NotFound

LINK_DIRS = ("by-class", "by-devnode")


class DeviceView:
    def __init__(self, index: DeviceIndex | None) -> None:
        self.index = index

    def resolve(self, path: tuple[str, ...]):
        """('dir', None) | ('device', dev) | ('file', (dev, name)) | ('link', target)."""
        idx = self.index
        if idx is None:
            raise NotFound("devices")
        n = len(path)
        if n == 1:
            return "dir", None
        top = path[1]
        if top == "by-class":
            if n == 2:
                return "dir", None
            members = idx.classes().get(path[2])
            if members is None:
                raise NotFound(path[2])
            if n == 3:
                return "dir", None
            if n == 4 and path[3] in members:
                return "link", f"../../{path[3]}"
            raise NotFound(path[-1])
        if top == "by-devnode":
            if n == 2:
                return "dir", None
            name = idx.by_devnode().get(path[2]) if n == 3 else None
            if name is None:
                raise NotFound(path[-1])
            return "link", f"../{name}"
        dev = idx.get(top)
        if dev is None:
            raise NotFound(top)
        if n == 2:
            return "device", dev
        if n == 3:
            fname = path[2]
            if fname == "parent" and dev.parent:
                return "link", f"../{dev.parent}"
            if fname == "device.xml" or fname in dev.values:
                return "file", (dev, fname)
        raise NotFound(path[-1])

    def children(self, path: tuple[str, ...]) -> list[str]:
        idx = self.index
        if idx is None:
            return []
        n = len(path)
        if n == 1:
            return [*LINK_DIRS, *idx.names()]
        if path[1] == "by-class":
            if n == 2:
                return sorted(idx.classes())
            return list(idx.classes().get(path[2], []))
        if path[1] == "by-devnode":
            return sorted(idx.by_devnode())
        dev = idx.get(path[1])
        if dev is None:
            return []
        names = ["device.xml", *sorted(dev.values)]
        if dev.parent:
            names.append("parent")
        return names

    @staticmethod
    def content(dev, fname: str) -> bytes:
        if fname == "device.xml":
            return dev.xml
        return f"{dev.values[fname]}\n".encode()
