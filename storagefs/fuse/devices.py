"""devices/, served from the live DeviceIndex (dict lookups only).

    devices/NAME/{device.xml, one value per file, parent -> ../PARENT}
    devices/by-class/CLASS/NAME -> ../../NAME
    devices/by-devnode/NODE -> ../NAME      (nested /dev paths with '!' for '/')
"""

from __future__ import annotations

from typing import Any

from ..errors import NotFound
from .node import Caller, Dir, Generated, Link, LinkTable, Node, TableLink

LINK_DIRS = ("by-class", "by-devnode")


class DevicesDir(Dir):
    __slots__ = ()

    @property
    def index(self):
        return self.t.core.devices

    def names(self, caller: Caller) -> list[str]:
        return [*LINK_DIRS, *self.index.names()]

    def child(self, name: str, caller: Caller) -> Node:
        idx, path = self.index, (*self.path, name)
        if name == "by-class":
            return ByClassDir(self.t, path)
        if name == "by-devnode":
            return LinkTable(self.t, path, lambda: {
                node: f"../{dev}" for node, dev in idx.by_devnode().items()})
        dev = idx.get(name)
        if dev is None:
            raise NotFound(name)
        return DeviceDir(self.t, path, dev)


class ByClassDir(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return sorted(self.t.core.devices.classes())

    def child(self, name: str, caller: Caller) -> Node:
        members = self.t.core.devices.classes().get(name)
        if members is None:
            raise NotFound(name)
        return ClassDir(self.t, (*self.path, name))


class ClassDir(Dir):
    __slots__ = ()

    def _members(self) -> list[str]:
        return self.t.core.devices.classes().get(self.name, [])

    def alive(self) -> bool:
        return self.name in self.t.core.devices.classes()

    def names(self, caller: Caller) -> list[str]:
        return list(self._members())

    def _table(self) -> dict[str, str]:
        return {m: f"../../{m}" for m in self._members()}

    def child(self, name: str, caller: Caller) -> Node:
        if name not in self._members():
            raise NotFound(name)
        return TableLink(self.t, (*self.path, name), f"../../{name}", self._table)


class DeviceDir(Dir):
    __slots__ = ("dev",)

    def __init__(self, t, path, dev: Any) -> None:
        super().__init__(t, path)
        self.dev = dev

    def key(self) -> tuple[Any, ...]:
        return (self.dev.sys_path, self.dev.name)

    def alive(self) -> bool:
        return self.t.core.devices.get(self.dev.name) is not None

    def current(self) -> Any:
        return self.t.core.devices.get(self.dev.name) or self.dev

    def names(self, caller: Caller) -> list[str]:
        dev = self.current()
        names = ["device.xml", *sorted(dev.values)]
        if dev.parent:
            names.append("parent")
        return names

    def child(self, name: str, caller: Caller) -> Node:
        dev, path = self.current(), (*self.path, name)
        if name == "parent" and dev.parent:
            return Link(self.t, path, f"../{dev.parent}")
        if name == "device.xml" or name in dev.values:
            return DeviceFile(self.t, path, self)
        raise NotFound(name)


class DeviceFile(Generated):
    __slots__ = ("parent",)

    def __init__(self, t, path, parent: DeviceDir) -> None:
        super().__init__(t, path)
        self.parent = parent

    def key(self) -> tuple[Any, ...]:
        return self.parent.key()

    def alive(self) -> bool:
        if not self.parent.alive():
            return False
        return self.name == "device.xml" or self.name in self.parent.current().values

    def version(self) -> object:
        return None  # the index replaces devices on change: rendering is a dict lookup

    def render(self) -> bytes:
        dev = self.parent.current()
        if self.name == "device.xml":
            return dev.xml
        return f"{dev.values[self.name]}\n".encode()
