"""Block devices (disks and partitions): libvirt's udevProcessStorage, kept
for the devices libvirt gives up on.

Deviation from libvirt, on purpose: libvirt computes ``size`` as the sysfs
``size`` (always 512-byte sectors) times the logical block size, which is
eight times too large on a 4Kn disk; here ``size`` is bytes and
``num_blocks`` is size / logical_block_size.  Both agree with libvirt on
512-byte devices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pyudev

from . import sysinfo
from .naming import node_device_name

if TYPE_CHECKING:
    from .probe import Probed

__all__ = ["storage"]

#: udevKludgeStorageType: device-node prefixes whose drive type libvirt infers
_KLUDGE = (("/dev/vd", "disk"), ("/dev/dasd", "dasd"), ("/dev/nvme", "disk"))
#: udev property, blkid tag, value file
_CONTENT = (
    ("ID_FS_TYPE", "TYPE", "fs_type"),
    ("ID_FS_UUID", "UUID", "uuid"),
    ("ID_FS_LABEL", "LABEL", "label"),
    ("ID_PART_TABLE_TYPE", "PTTYPE", "pttype"),
    ("ID_PART_ENTRY_UUID", "PART_ENTRY_UUID", "part_uuid"),
    ("ID_PART_ENTRY_NAME", "PART_ENTRY_NAME", "part_name"),
)


def _read(path: str) -> str | None:
    return sysinfo.read_text(path)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _drive_type(props: Mapping[str, str], devnode: str, partition: bool) -> str | None:
    """udev's ID_TYPE, or what libvirt derives without it; None when unknown
    (libvirt drops such a device; we list it without a drive type)."""
    kind = props.get("ID_TYPE")
    if kind and kind != "generic":
        return kind
    if "ID_DRIVE_FLOPPY" in props:
        return "floppy"
    if "ID_CDROM" in props:
        return "cd"
    if "ID_DRIVE_FLASH_SD" in props:
        return "sd"
    if partition:
        return None  # a partition is not a drive: no guess from its name
    return next((sub for prefix, sub in _KLUDGE if devnode.startswith(prefix)), None)


def storage(dev: pyudev.Device, p: Probed, content: bool) -> bool:
    """Fill ``p`` for a block disk or partition; False when it has no node."""
    devnode = p.devnode
    if not devnode:
        return False
    props = dev.properties
    sys_path = dev.sys_path
    partition = dev.device_type == "partition"
    disk_path = os.path.dirname(sys_path) if partition else sys_path
    serial = props.get("ID_SERIAL") or None
    vendor = (_read(os.path.join(sys_path, "device/vendor")) or "").strip() or None
    model = (_read(os.path.join(sys_path, "device/model")) or "").strip() or None
    drive_type = _drive_type(props, devnode, partition)
    sectors = _int(_read(os.path.join(sys_path, "size"))) or 0
    lbs = _int(_read(os.path.join(disk_path, "queue/logical_block_size"))) or 0
    size = sectors * 512
    num_blocks = size // lbs if lbs else 0
    removable_attr = _read(os.path.join(sys_path, "removable"))
    cap = {"block": devnode, "bus": props.get("ID_BUS"), "drive_type": drive_type,
           "model": model, "vendor": vendor, "serial": serial, "removable": False,
           "media_available": False, "media_size": 0, "media_label": None,
           "size": size, "logical_block_size": lbs, "num_blocks": num_blocks}
    if drive_type in ("cd", "cd/dvd", "floppy"):
        if drive_type != "floppy":
            cap["drive_type"] = "cdrom"  # libvirt keeps HAL's word
            has_media = (_int(props.get("ID_CDROM_MEDIA")) or 0) != 0
        else:
            has_media = "ID_FS_LABEL" in props
        cap["removable"] = removable_attr == "1"
        cap["media_available"] = has_media
        if has_media:
            cap["media_label"] = props.get("ID_FS_LABEL")
            cap["media_size"] = size
        else:
            cap["logical_block_size"] = cap["num_blocks"] = 0
    p.cap = cap
    p.is_disk = not partition
    p.base_name = node_device_name(p.subsystem, dev.sys_name, serial)

    v = p.values
    v["size"] = str(size)
    if lbs:
        v["logical_block_size"] = str(lbs)
    for key, text in (("removable", removable_attr),
                      ("ro", _read(os.path.join(sys_path, "ro"))),
                      ("serial", serial or _read(os.path.join(sys_path, "serial"))
                       or _read(os.path.join(sys_path, "device/serial"))),
                      ("vendor", vendor), ("model", model), ("bus", cap["bus"]),
                      ("drive_type", cap["drive_type"]),
                      ("partition", _read(os.path.join(sys_path, "partition"))),
                      ("backing_file", _read(os.path.join(sys_path, "loop/backing_file")))):
        if text:
            v[key] = text
    start = _int(_read(os.path.join(sys_path, "start"))) if partition else None
    if start is not None:
        v["offset"] = str(start * 512)
    _content(props, devnode, size, content, v)
    return True


def _content(props: Mapping[str, str], devnode: str, size: int, probe: bool,
             values: dict[str, str]) -> None:
    """Filesystem / partition-table facts: udev's database when udevd has
    processed the device, else (when allowed) a blkid probe."""
    if "USEC_INITIALIZED" in props or any(prop in props for prop, _, _ in _CONTENT):
        found = {key: props.get(prop) for prop, _, key in _CONTENT}
    elif probe and size > 0:
        tags = sysinfo.blkid_probe(devnode)
        found = {key: tags.get(tag) for _, tag, key in _CONTENT}
    else:
        return
    values.update({k: val for k, val in found.items() if val})
