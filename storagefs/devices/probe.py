"""One udev device -> what libvirt's udev backend would make of it.

The type decision and the per-type reads follow ``udevGetDeviceType`` and the
``udevProcess*`` functions of libvirt's src/node_device/node_device_udev.c.
Where libvirt drops a block device (no drive type it recognises: loop, zram,
partitions, SCSI disks without udev's database) we keep it as ``storage``
without a ``<drive_type>``: those are what storage pools are built on.

The result carries the capability data for :mod:`.nodedev_xml` and the
one-value files; the parent is resolved later by the index (it depends on
which other devices are listed).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pyudev

from . import sysinfo
from .naming import node_device_name
from .storage import storage as _storage

log = logging.getLogger(__name__)

__all__ = ["SUBSYSTEMS", "Probed", "probe"]

#: subsystems that can hold a device libvirt lists (the rest is never read)
SUBSYSTEMS = ("pci", "usb", "net", "scsi", "block", "scsi_generic", "drm", "mdev")

_DEVTYPE_CAPS = {
    "usb_device": "usb_device", "usb_interface": "usb", "scsi_host": "scsi_host",
    "scsi_target": "scsi_target", "scsi_device": "scsi", "disk": "storage",
    "partition": "storage", "wlan": "net", "drm_minor": "drm",
}
_SCSI_TYPES = {0: "disk", 1: "tape", 3: "processor", 4: "worm", 5: "cdrom", 6: "scanner",
               7: "mod", 8: "changer", 13: "enclosure", 12: "raid"}
_DRM_TYPES = ("primary", "control", "render")
_MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")


@dataclass
class Probed:
    """A device as read from sysfs/udev, before naming conflicts and parents
    are settled by the index."""

    sys_path: str
    base_name: str  # libvirt's name (before de-duplication)
    cap_type: str  # libvirt capability name
    cap: dict[str, Any]  # input of nodedev_xml for that capability
    subsystem: str
    devnode: str | None = None  # full /dev path
    devlinks: list[str] = field(default_factory=list)
    driver: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    #: a whole block disk: its partitions are re-read with it
    is_disk: bool = False


def _attr(dev: pyudev.Device, name: str) -> str | None:
    return sysinfo.read_text(os.path.join(dev.sys_path, name))


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def cap_type_of(dev: pyudev.Device) -> str | None:
    """libvirt's capability for a udev device (udevGetDeviceType), with
    partitions counted as storage; None for devices libvirt does not list."""
    props = dev.properties
    devtype = dev.device_type
    if devtype:
        kind = _DEVTYPE_CAPS.get(devtype)
        if kind == "storage" and dev.subsystem != "block":
            return None
        return kind
    kind = None
    if "PCI_CLASS" in props:
        kind = "pci"
    if "INTERFACE" in props:
        kind = "net"
    subsystem = dev.subsystem
    if subsystem == "scsi_generic":
        kind = "scsi_generic"
    elif subsystem == "mdev":
        kind = "mdev"
    return kind


def probe(dev: pyudev.Device, content: bool = True) -> Probed | None:
    """The node device for ``dev``, or None when libvirt would not list it
    (and we do not add it).  ``content`` allows a blkid probe of block
    devices when udev's database has nothing on their content."""
    kind = cap_type_of(dev)
    if kind is None:
        return None
    handler = _HANDLERS.get(kind)
    if handler is None:
        return None
    props = dev.properties
    p = Probed(sys_path=dev.sys_path, base_name="", cap_type=kind, cap={},
               subsystem=dev.subsystem or "", devnode=dev.device_node,
               devlinks=sorted(dev.device_links), driver=props.get("DRIVER") or None)
    values = p.values
    values["path"] = p.sys_path
    values["subsystem"] = p.subsystem
    if dev.device_type:
        values["devtype"] = dev.device_type
    if p.driver:
        values["driver"] = p.driver
    if p.devnode:
        values["devnode"] = p.devnode
        for key in ("MAJOR", "MINOR"):
            if props.get(key):
                values[key.lower()] = props[key]
    try:
        ok = handler(dev, p, content)
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", dev.sys_path, exc)
        return None
    return p if ok else None


def _pci(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    parts = dev.sys_name.replace(".", ":").split(":")
    if len(parts) != 4:
        return False
    domain, bus, slot, function = (int(x, 16) for x in parts)
    klass = _int(dev.properties.get("PCI_CLASS"), 16)
    vendor = _int(_attr(dev, "vendor"), 16) or 0
    product = _int(_attr(dev, "device"), 16) or 0
    numa = _int(_attr(dev, "numa_node"))
    phys, vfs, max_vfs = sysinfo.pci_sriov(dev.sys_path)
    group, members = sysinfo.pci_iommu_group(dev.sys_path)
    header, pcie = sysinfo.pci_config_caps(dev.sys_path)
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {
        "class": klass, "domain": domain, "bus": bus, "slot": slot, "function": function,
        "product": product, "product_name": dev.properties.get("ID_MODEL_FROM_DATABASE"),
        "vendor": vendor, "vendor_name": dev.properties.get("ID_VENDOR_FROM_DATABASE"),
        "phys_function": phys, "virt_functions": vfs, "max_vfs": max_vfs, "header": header,
        "iommu_group": group, "iommu_members": members,
        "numa": numa if numa is not None and numa >= 0 else None, "pcie": pcie,
    }
    v = p.values
    v["vendor"] = f"0x{vendor:04x}"
    v["product"] = f"0x{product:04x}"
    if klass is not None:
        v["class"] = f"0x{klass:06x}"
    for key in ("vendor_name", "product_name"):
        if p.cap[key]:
            v[key] = p.cap[key]
    if p.cap["numa"] is not None:
        v["numa_node"] = str(p.cap["numa"])
    if group is not None:
        v["iommu_group"] = str(group)
    return True


def _usb_device(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    props = dev.properties
    bus, devnum = _int(props.get("BUSNUM")), _int(props.get("DEVNUM"))
    if bus is None or devnum is None:
        return False
    vendor = _int(props.get("ID_VENDOR_ID") or _attr(dev, "idVendor"), 16) or 0
    product = _int(props.get("ID_MODEL_ID") or _attr(dev, "idProduct"), 16) or 0
    vendor_name = props.get("ID_VENDOR_FROM_DATABASE") or _attr(dev, "manufacturer")
    product_name = props.get("ID_MODEL_FROM_DATABASE") or _attr(dev, "product")
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"bus": bus, "device": devnum, "product": product, "product_name": product_name,
             "vendor": vendor, "vendor_name": vendor_name}
    v = p.values
    v.update(busnum=str(bus), devnum=str(devnum), vendor=f"0x{vendor:04x}",
             product=f"0x{product:04x}")
    if vendor_name:
        v["vendor_name"] = vendor_name
    if product_name:
        v["product_name"] = product_name
    serial = _attr(dev, "serial")
    if serial:
        v["serial"] = serial
    return True


def _usb_interface(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    fields = {}
    for key, attr in (("number", "bInterfaceNumber"), ("class", "bInterfaceClass"),
                      ("subclass", "bInterfaceSubClass"), ("protocol", "bInterfaceProtocol")):
        fields[key] = _int(_attr(dev, attr), 16) or 0
        p.values[key] = str(fields[key])
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = fields
    return True


def _net(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    ifname = dev.properties.get("INTERFACE") or dev.sys_name
    address = _attr(dev, "address")
    speed, state = sysinfo.net_link(dev.sys_path)
    p.base_name = node_device_name(p.subsystem, dev.sys_name, address)
    # nodedev.rng only takes 6-byte MACs; longer link addresses (InfiniBand,
    # tunnels) stay in the name and the value file, as libvirt names them
    xml_address = address if address and _MAC.fullmatch(address) else None
    p.cap = {"interface": ifname, "address": xml_address, "speed": speed, "state": state,
             "features": sysinfo.net_features(ifname),
             "subtype": "80211" if dev.device_type == "wlan" else "80203"}
    p.values["interface"] = ifname
    if address:
        p.values["address"] = address
    return True


def _scsi_host(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    host = _int(dev.sys_name[4:]) if dev.sys_name.startswith("host") else None
    if host is None:
        return False
    unique = _int(sysinfo.read_text(f"/sys/class/scsi_host/{dev.sys_name}/unique_id"))
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"host": host, "unique_id": unique}
    p.values["host"] = str(host)
    return True


def _scsi_target(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"target": dev.sys_name}
    return True


def _scsi(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    parts = [_int(x) for x in dev.sys_name.split(":")]
    if len(parts) != 4 or None in parts:
        return False
    host, bus, target, lun = parts
    kind = _int(_attr(dev, "type"), 0)
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"host": host, "bus": bus, "target": target, "lun": lun,
             "type": _SCSI_TYPES.get(kind) if kind is not None else None}
    for key in ("vendor", "model"):
        text = _attr(dev, key)
        if text and text.strip():
            p.values[key] = text.strip()
    if p.cap["type"]:
        p.values["type"] = p.cap["type"]
    return True


def _scsi_generic(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    if not p.devnode:
        return False
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"char": p.devnode}
    return True


def _drm(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    minor = _int(dev.properties.get("MINOR"))
    if minor is None or minor < 0 or (minor >> 6) >= len(_DRM_TYPES):
        return False
    p.base_name = node_device_name(p.subsystem, dev.sys_name)
    p.cap = {"type": _DRM_TYPES[minor >> 6]}
    p.values["type"] = p.cap["type"]
    return True


def _mdev(dev: pyudev.Device, p: Probed, _content: bool) -> bool:
    try:
        mdev_type = os.path.basename(os.path.realpath(os.path.join(dev.sys_path, "mdev_type")))
        group = int(os.path.basename(os.readlink(os.path.join(dev.sys_path, "iommu_group"))))
    except (OSError, ValueError):
        return False
    parent_addr = os.path.basename(os.path.dirname(dev.sys_path))
    p.base_name = node_device_name(p.subsystem, dev.sys_name, parent_addr)
    p.cap = {"type": mdev_type, "uuid": dev.sys_name, "parent_addr": parent_addr,
             "iommu_group": group}
    p.values.update(type=mdev_type, uuid=dev.sys_name, iommu_group=str(group))
    return True


_HANDLERS = {
    "pci": _pci, "usb_device": _usb_device, "usb": _usb_interface, "net": _net,
    "scsi_host": _scsi_host, "scsi_target": _scsi_target, "scsi": _scsi,
    "scsi_generic": _scsi_generic, "drm": _drm, "mdev": _mdev, "storage": _storage,
}
