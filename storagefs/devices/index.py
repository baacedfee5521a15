"""The device index: every node device, by name, class and device node,
built once from sysfs and then kept current by kernel uevents.

Lookups (``names``, ``get``, ``classes``, ``by_devnode``) only read dicts
prepared when the index last changed; sysfs is read at :meth:`load` and,
per event, only for the devices the event concerns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyudev

from . import sysinfo
from .naming import COMPUTER, devnode_key, unique_name
from .nodedev_xml import format_device
from .probe import SUBSYSTEMS, Probed, probe

log = logging.getLogger(__name__)

__all__ = ["Device", "DeviceIndex", "OnChange"]

#: on_change(added, removed, changed): sets of device names
OnChange = Callable[[set[str], set[str], set[str]], None]


@dataclass
class Device:
    """One node device as the tree shows it."""

    #: libvirt node-device name: computer, pci_0000_00_02_0, block_loop3p1 ...
    name: str
    #: /sys/devices/... ("" for computer)
    sys_path: str
    #: name of the parent device (None for computer only)
    parent: str | None
    #: libvirt capability names: system, pci, net, storage, scsi_host ...
    classes: list[str]
    #: the device node under /dev ("sda", "loop3p1"; "/" written "!"), or None
    devnode: str | None
    #: one-value files, only the facts the device has; text without newline
    values: dict[str, str] = field(default_factory=dict)
    #: device.xml: node-device XML, valid against libvirt's nodedev.rng
    xml: bytes = b""


def _computer() -> Device:
    """libvirt's fictional root device, from DMI when the machine has it."""
    dmi = sysinfo.dmi_info() or {}
    xml = format_device(COMPUTER, [("system", dmi)])
    values = {k: v for k, v in dmi.items() if v and k in ("product", "vendor", "uuid", "serial")}
    return Device(COMPUTER, "", None, ["system"], None, values, xml.encode())


class DeviceIndex:
    """Node devices of this host, libvirt-named, kept current by :meth:`run`."""

    def __init__(self, *, content_probe: bool = True) -> None:
        #: whether block devices unknown to udev's database are probed with blkid
        self.content_probe = content_probe
        self._ctx = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._probed: dict[str, Probed] = {}  # sys_path -> probe result
        self._name_of: dict[str, str] = {}  # sys_path -> name
        self._devices: dict[str, Device] = {}  # name -> device
        self._names: list[str] = []
        self._classes: dict[str, list[str]] = {}
        self._devnodes: dict[str, str] = {}

    # --- lookups (hot path: prepared dicts only) ---------------------------

    def names(self) -> list[str]:
        """All device names, sorted."""
        return list(self._names)

    def get(self, name: str) -> Device | None:
        return self._devices.get(name)

    def classes(self) -> dict[str, list[str]]:
        """Capability name -> sorted device names."""
        return {k: list(v) for k, v in self._classes.items()}

    def by_devnode(self) -> dict[str, str]:
        """Device node (path under /dev, ``/`` as ``!``) -> device name."""
        return dict(self._devnodes)

    def __len__(self) -> int:
        return len(self._devices)

    # --- building ------------------------------------------------------------

    def load(self) -> None:
        """Full scan of sysfs (startup).  The kernel monitor is opened first,
        so a device that changes during the scan is seen again by :meth:`run`
        (call :meth:`close` instead when run() will not follow: the socket
        would keep queueing events)."""
        if self._monitor is None:
            self._monitor = self._open_monitor()
        found = self.scan(self._ctx, self.content_probe)
        self._probed.clear()
        self._name_of.clear()
        self._devices = {COMPUTER: _computer()}
        self.apply(found, ())

    @staticmethod
    def scan(ctx: pyudev.Context, content: bool) -> dict[str, Probed]:
        """Probe every device of the subsystems libvirt lists (pure reads)."""
        enum = ctx.list_devices()
        for subsystem in SUBSYSTEMS:
            enum = enum.match_subsystem(subsystem)
        found = {}
        for dev in enum:
            p = probe(dev, content)
            if p is not None:
                found[p.sys_path] = p
        return found

    def _open_monitor(self) -> pyudev.Monitor | None:
        try:
            monitor = pyudev.Monitor.from_netlink(self._ctx, "kernel")
            try:
                monitor.set_receive_buffer_size(16 * 1024 * 1024)
            except OSError:
                pass  # needs CAP_NET_ADMIN; the default buffer still works
            monitor.start()
        except OSError as exc:
            log.error("no kernel uevent monitor (%s): devices will not follow hotplug", exc)
            return None
        return monitor

    def take_monitor(self) -> pyudev.Monitor | None:
        """The monitor opened by :meth:`load` (or a new one), for :meth:`run`."""
        monitor, self._monitor = self._monitor, None
        return monitor or self._open_monitor()

    def close(self) -> None:
        """Drop the kernel monitor opened by :meth:`load` when :meth:`run` will
        not be called (libudev closes the socket with its last reference)."""
        self._monitor = None

    def known_paths(self) -> list[str]:
        return list(self._probed)

    def is_disk(self, sys_path: str) -> bool:
        p = self._probed.get(sys_path)
        return bool(p and p.is_disk)

    def apply(self, updates: dict[str, Probed | None],
              removed_paths: Iterable[str]) -> tuple[set[str], set[str], set[str]]:
        """Bring the index in line with fresh probes.

        ``updates`` maps sys paths to their new probe (None: gone);
        ``removed_paths`` are gone as well.  Returns (added, removed, changed)
        device names.  Only this method mutates the index, and it replaces the
        lookup dicts wholesale, so readers never see a half-done update.
        """
        before = self._devices
        gone = {path for path, p in updates.items() if p is None} | set(removed_paths)
        touched: set[str] = set()
        for path in gone:
            if self._probed.pop(path, None) is not None:
                self._name_of.pop(path, None)
                touched.add(path)
        taken = set(self._name_of.values()) | {COMPUTER}
        fresh = {path: p for path, p in updates.items() if p is not None and path not in gone}
        # keep the names of devices whose libvirt name did not change
        for path in sorted(fresh):
            old = self._probed.get(path)
            if old is not None and old.base_name != fresh[path].base_name:
                taken.discard(self._name_of.pop(path))
            self._probed[path] = fresh[path]
            touched.add(path)
        for path in sorted(fresh):
            if path not in self._name_of:
                self._name_of[path] = unique_name(self._probed[path].base_name, taken)
                taken.add(self._name_of[path])

        # devices below a touched path may have a new parent (name)
        prefixes = tuple(p + "/" for p in touched)
        affected = {path for path in self._probed if path in touched or path.startswith(prefixes)}
        devices = {n: d for n, d in before.items()
                   if n == COMPUTER or self._name_of.get(d.sys_path) == n}
        for path in affected:
            devices[self._name_of[path]] = self._device(path)
        self._devices = devices
        self._rebuild_lookups()

        added = set(devices) - set(before)
        removed = set(before) - set(devices)
        changed = {n for n in set(devices) & set(before) if devices[n] != before[n]}
        return added, removed, changed

    def _parent_name(self, sys_path: str) -> str:
        """Nearest listed ancestor in sysfs, else ``computer`` (udevSetParent)."""
        path = os.path.dirname(sys_path)
        while len(path) > len("/sys"):
            name = self._name_of.get(path)
            if name is not None:
                return name
            path = os.path.dirname(path)
        return COMPUTER

    def _device(self, sys_path: str) -> Device:
        p = self._probed[sys_path]
        name = self._name_of[sys_path]
        parent = self._parent_name(sys_path)
        xml = format_device(name, [(p.cap_type, p.cap)], path=p.sys_path, devnode=p.devnode,
                            devlinks=p.devlinks, parent=parent, driver=p.driver)
        node = devnode_key(p.devnode) if p.devnode else None
        return Device(name, p.sys_path, parent, [p.cap_type], node, dict(p.values),
                      xml.encode())

    def _rebuild_lookups(self) -> None:
        classes: dict[str, list[str]] = {}
        devnodes: dict[str, str] = {}
        for name in sorted(self._devices):
            dev = self._devices[name]
            for cls in dev.classes:
                classes.setdefault(cls, []).append(name)
            if dev.devnode:
                devnodes.setdefault(dev.devnode, name)
        self._names = sorted(self._devices)
        self._classes = classes
        self._devnodes = devnodes

    # --- live ------------------------------------------------------------------

    async def run(self, on_change: OnChange) -> None:
        """Follow kernel uevents until cancelled (see :mod:`.monitor`)."""
        from .monitor import follow

        await follow(self, on_change)
