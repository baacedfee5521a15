"""libvirt node-device XML, written as ``virNodeDeviceDefFormat``
(src/conf/node_device_conf.c) writes it: same elements, same order, same
two-space indentation and quoting, so that ``device.xml`` reads like
``virsh nodedev-dumpxml`` and validates against nodedev.rng.

Each capability is a ``(type, dict)`` pair; the dict keys are the fields of
libvirt's ``virNodeDevCapData`` for that type (see the ``_cap_*`` writers).
A value of None means "libvirt would leave it out".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["ZERO_UUID", "escape", "format_device"]

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# virBufferEscapeString drops the control characters XML 1.0 cannot carry
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def escape(value: object) -> str:
    """virBufferEscapeString for element text and single-quoted attributes."""
    return (_CONTROL.sub("", str(value)).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;").replace("'", "&apos;"))


class _Out:
    """A virBuffer: lines at the current indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def elem(self, tag: str, value: object) -> None:
        """``<tag>value</tag>``, escaped; nothing when value is None."""
        if value is not None:
            self.line(f"<{tag}>{escape(value)}</{tag}>")

    def open(self, text: str) -> None:
        self.line(text)
        self.depth += 1

    def close(self, text: str) -> None:
        self.depth -= 1
        self.line(text)


def _pci_address(addr: Sequence[int]) -> str:
    domain, bus, slot, function = addr
    # function='0x%d' is libvirt's own spelling
    return (f"<address domain='0x{domain:04x}' bus='0x{bus:02x}' slot='0x{slot:02x}' "
            f"function='0x{function:d}'/>")


def _id_elem(out: _Out, tag: str, ident: int, name: str | None, empty: str) -> None:
    if name:
        out.line(f"<{tag} id='0x{ident:04x}'>{escape(name)}</{tag}>")
    else:
        out.line(f"<{tag} id='0x{ident:04x}'{empty}")


def _cap_system(out: _Out, c: dict[str, Any]) -> None:
    out.elem("product", c.get("product"))
    out.open("<hardware>")
    for key in ("vendor", "version", "serial"):
        out.elem(key, c.get(key))
    out.elem("uuid", c.get("uuid") or ZERO_UUID)
    out.close("</hardware>")
    out.open("<firmware>")
    out.elem("vendor", c.get("bios_vendor"))
    out.elem("version", c.get("bios_version"))
    out.elem("release_date", c.get("bios_date"))
    out.close("</firmware>")


def _link(validity: str, link: Sequence | None) -> str | None:
    if link is None:
        return None
    port, speed, width = link
    text = f"<link validity='{validity}'"
    if port is not None and port >= 0:
        text += f" port='{port}'"
    if speed:
        text += f" speed='{speed}'"
    return text + f" width='{width}'/>"


def _cap_pci(out: _Out, c: dict[str, Any]) -> None:
    if c.get("class") is not None and c["class"] >= 0:
        out.line(f"<class>0x{c['class']:06x}</class>")
    for key in ("domain", "bus", "slot", "function"):
        out.elem(key, c[key])
    _id_elem(out, "product", c["product"], c.get("product_name"), "/>")
    _id_elem(out, "vendor", c["vendor"], c.get("vendor_name"), "/>")
    if c.get("phys_function"):
        out.open("<capability type='phys_function'>")
        out.line(_pci_address(c["phys_function"]))
        out.close("</capability>")
    vfs = c.get("virt_functions")
    if vfs is not None:
        head = "<capability type='virt_functions'"
        if c.get("max_vfs"):
            head += f" maxCount='{c['max_vfs']}'"
        if not vfs:
            out.line(head + "/>")
        else:
            out.open(head + ">")
            for addr in vfs:
                out.line(_pci_address(addr))
            out.close("</capability>")
    if c.get("header"):
        out.line(f"<capability type='{c['header']}'/>")
    members = c.get("iommu_members") or []
    if c.get("iommu_group") is not None and members:
        out.open(f"<iommuGroup number='{c['iommu_group']}'>")
        for addr in members:
            out.line(_pci_address(addr))
        out.close("</iommuGroup>")
    if c.get("numa") is not None and c["numa"] >= 0:
        out.line(f"<numa node='{c['numa']}'/>")
    pcie = c.get("pcie")
    if pcie is not None:
        links = [x for x in (_link("cap", pcie.get("cap")), _link("sta", pcie.get("sta"))) if x]
        if not links:
            out.line("<pci-express/>")
        else:
            out.open("<pci-express>")
            for text in links:
                out.line(text)
            out.close("</pci-express>")


def _cap_usb_device(out: _Out, c: dict[str, Any]) -> None:
    out.elem("bus", c["bus"])
    out.elem("device", c["device"])
    _id_elem(out, "product", c["product"], c.get("product_name"), " />")
    _id_elem(out, "vendor", c["vendor"], c.get("vendor_name"), " />")


def _cap_usb(out: _Out, c: dict[str, Any]) -> None:
    for key in ("number", "class", "subclass", "protocol", "description"):
        out.elem(key, c.get(key))


def _cap_net(out: _Out, c: dict[str, Any]) -> None:
    out.elem("interface", c["interface"])
    out.elem("address", c.get("address"))
    if c.get("speed") or c.get("state"):
        text = "<link"
        if c.get("speed"):
            text += f" speed='{c['speed']}'"
        if c.get("state"):
            text += f" state='{c['state']}'"
        out.line(text + "/>")
    for feature in c.get("features") or ():
        out.line(f"<feature name='{escape(feature)}'/>")
    if c.get("subtype"):
        out.line(f"<capability type='{c['subtype']}'/>")


def _cap_scsi_host(out: _Out, c: dict[str, Any]) -> None:
    out.elem("host", c["host"])
    if c.get("unique_id") is not None and c["unique_id"] != -1:
        out.elem("unique_id", c["unique_id"])


def _cap_scsi_target(out: _Out, c: dict[str, Any]) -> None:
    out.elem("target", c["target"])


def _cap_scsi(out: _Out, c: dict[str, Any]) -> None:
    for key in ("host", "bus", "target", "lun", "type"):
        out.elem(key, c.get(key))


def _cap_storage(out: _Out, c: dict[str, Any]) -> None:
    for key in ("block", "bus", "drive_type", "model", "vendor", "serial"):
        out.elem(key, c.get(key))
    lbs, blocks = c.get("logical_block_size") or 0, c.get("num_blocks") or 0
    if c.get("removable"):
        out.open("<capability type='removable'>")
        out.elem("media_available", 1 if c.get("media_available") else 0)
        out.elem("media_size", c.get("media_size") or 0)
        out.elem("media_label", c.get("media_label"))
    else:
        out.elem("size", c.get("size") or 0)
    # libvirt writes each when > 0, but nodedev.rng wants both or neither
    # (an empty loop device has a block size and no blocks)
    if lbs > 0 and blocks > 0:
        out.elem("logical_block_size", lbs)
        out.elem("num_blocks", blocks)
    if c.get("removable"):
        out.close("</capability>")
    if c.get("hotpluggable"):
        out.line("<capability type='hotpluggable'/>")


def _cap_scsi_generic(out: _Out, c: dict[str, Any]) -> None:
    out.elem("char", c["char"])


def _cap_drm(out: _Out, c: dict[str, Any]) -> None:
    out.elem("type", c["type"])


def _cap_mdev(out: _Out, c: dict[str, Any]) -> None:
    out.line(f"<type id='{escape(c['type'])}'/>")
    out.elem("uuid", c.get("uuid"))
    out.elem("parent_addr", c.get("parent_addr"))
    out.line(f"<iommuGroup number='{c['iommu_group']}'/>")


_WRITERS: dict[str, Callable[[_Out, dict[str, Any]], None]] = {
    "system": _cap_system, "pci": _cap_pci, "usb_device": _cap_usb_device, "usb": _cap_usb,
    "net": _cap_net, "scsi_host": _cap_scsi_host, "scsi_target": _cap_scsi_target,
    "scsi": _cap_scsi, "storage": _cap_storage, "scsi_generic": _cap_scsi_generic,
    "drm": _cap_drm, "mdev": _cap_mdev,
}


def format_device(name: str, caps: Iterable[tuple[str, dict[str, Any]]], *,
                  path: str | None = None, devnode: str | None = None,
                  devlinks: Iterable[str] = (), parent: str | None = None,
                  driver: str | None = None) -> str:
    """The ``<device>`` document, ending in a newline as libvirt's does."""
    out = _Out()
    out.open("<device>")
    out.elem("name", name)
    out.elem("path", path)
    if devnode:
        out.line(f"<devnode type='dev'>{escape(devnode)}</devnode>")
    for link in devlinks:
        out.line(f"<devnode type='link'>{escape(link)}</devnode>")
    out.elem("parent", parent)
    if driver:
        out.open("<driver>")
        out.elem("name", driver)
        out.close("</driver>")
    for kind, data in caps:
        out.open(f"<capability type='{kind}'>")
        _WRITERS[kind](out, data)
        out.close("</capability>")
    out.close("</device>")
    return "\n".join(out.lines) + "\n"
