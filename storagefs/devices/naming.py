"""Node-device names, as libvirt's udev backend makes them.

libvirt (``nodeDeviceGenerateName`` in src/node_device/node_device_driver.c)
names a device ``<subsystem>_<sysname>`` plus ``_<extra>`` for some
capabilities (the MAC address for net, udev's ``ID_SERIAL`` for storage, the
parent address for mdev), then replaces every byte that is not an ASCII letter
or digit by ``_``.  The result is always a valid file name ([A-Za-z0-9_]); we
only add what libvirt does not need: a length cap (NAME_MAX is 255 bytes and a
serial can be long) and de-duplication (libvirt silently lets the later device
win; a file tree cannot have two entries with one name).
"""

from __future__ import annotations

import hashlib

from ..names import fit_name

__all__ = ["COMPUTER", "MAX_NAME", "devnode_key", "node_device_name", "sanitize", "unique_name"]

#: the fictional root device libvirt creates for the host itself
COMPUTER = "computer"
#: longest name we hand out (a directory entry holds at most 255 bytes)
MAX_NAME = 255
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def sanitize(text: str) -> str:
    """Replace every byte of ``text`` (UTF-8) that is not [A-Za-z0-9] by ``_``.

    Byte by byte, as libvirt's ``g_ascii_isalnum`` loop over a C string does:
    a two-byte UTF-8 character becomes two underscores.
    """
    raw = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _ALNUM else "_" for b in raw)


def node_device_name(subsystem: str, sysname: str, extra: str | None = None) -> str:
    """libvirt's name for a udev device; ``extra`` is the per-capability suffix.

    Names longer than :data:`MAX_NAME` keep their head and end in a short hash of
    the whole, so two long serials that share a prefix still differ.
    """
    name = sanitize(f"{subsystem}_{sysname}" if extra is None else f"{subsystem}_{sysname}_{extra}")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_NAME - 13]}_{digest}"
    return name


def unique_name(base: str, taken: set[str] | dict[str, object]) -> str:
    """``base`` if free, else ``base_2``, ``base_3`` ... (the first one free).

    Only reached when two devices sanitise to one name (say ``pci_bus_0000:00``
    and ``pci_bus_0000_00``), which libvirt itself does not handle.
    """
    if base not in taken:
        return base
    n = 2
    while True:
        suffix = f"_{n}"
        candidate = base[: MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def devnode_key(devnode: str) -> str:
    """The ``by-devnode`` entry for a device node path: its path under /dev,
    with ``/`` written ``!`` (the kernel's own spelling in sysfs names, as in
    ``cciss!c0d0``) so that ``/dev/dri/card0`` is ``dri!card0`` and two USB
    nodes ``/dev/bus/usb/001/002`` and ``/dev/bus/usb/002/002`` do not clash."""
    rel = devnode[len("/dev/"):] if devnode.startswith("/dev/") else devnode.lstrip("/")
    return fit_name(rel.replace("/", "!"))
