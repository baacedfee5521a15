"""A storage pool's ``<source>``: hosts, devices, directory, adapter, auth ...

libvirt parses every part for every pool type, but prints (and requires) only
the parts the pool type uses; see :mod:`storagefs.xml.pooltypes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from .common import (
    SecretRef,
    Writer,
    attr,
    escape,
    first,
    parse_secret,
    parse_tristate,
    sanitize_path,
    text,
    write_secret,
)
from .pooltypes import (
    SOURCE_ADAPTER,
    SOURCE_DEVICE,
    SOURCE_DIR,
    SOURCE_HOST,
    SOURCE_INITIATOR_IQN,
    SOURCE_NAME,
    PoolTypeInfo,
)
from .safe import XmlError

__all__ = [
    "Adapter",
    "Auth",
    "FreeExtent",
    "PciAddress",
    "PoolSource",
    "SourceDevice",
    "SourceHost",
    "parse_source",
    "validate_adapter",
    "write_source",
]

_WWN = re.compile(r"(0x)?[0-9A-Fa-f]{16}")
_AUTH_TYPES = ("none", "chap", "ceph")


@dataclass
class SourceHost:
    name: str
    port: int | None = None


@dataclass
class FreeExtent:
    start: int
    end: int


@dataclass
class SourceDevice:
    path: str
    #: disk pools: whether partition names get a 'p' separator (None: not said)
    part_separator: bool | None = None
    #: filled by a refresh of a disk pool (never read from XML, as libvirt)
    #: live figures (status.xml only): not part of the definition's identity
    free_extents: list[FreeExtent] = field(default_factory=list, compare=False)


@dataclass
class PciAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0


@dataclass
class Adapter:
    """``<adapter>`` of a scsi pool: a SCSI host (by name or parent PCI address)
    or a Fibre Channel host (by WWNN/WWPN)."""

    type: str  # "scsi_host" or "fc_host"
    name: str | None = None
    parent_address: PciAddress | None = None
    unique_id: int | None = None
    parent: str | None = None
    managed: bool | None = None
    parent_wwnn: str | None = None
    parent_wwpn: str | None = None
    parent_fabric_wwn: str | None = None
    wwnn: str | None = None
    wwpn: str | None = None


@dataclass
class Auth:
    """``<auth>``: CHAP (iSCSI) or cephx (RBD) credentials held in a secret."""

    type: str  # "chap" or "ceph"
    username: str
    secret: SecretRef = field(default_factory=SecretRef)


@dataclass
class PoolSource:
    hosts: list[SourceHost] = field(default_factory=list)
    devices: list[SourceDevice] = field(default_factory=list)
    dir: str | None = None
    adapter: Adapter | None = None
    name: str | None = None
    #: the pool's source format (fs: ext4 ..., netfs: nfs ..., disk: gpt ..., logical: lvm2)
    format: str | None = None
    auth: Auth | None = None
    initiator_iqn: str | None = None
    protocol_ver: str | None = None
    vendor: str | None = None
    product: str | None = None


def _parse_int(node: etree._Element, name: str, base: int = 10) -> int | None:
    value = attr(node, name)
    if value is None:
        return None
    try:
        return int(value.strip(), base)
    except ValueError:
        raise XmlError(
            f"Invalid value for attribute '{name}' in element '{node.tag}': '{value}'. "
            "Expected integer value"
        ) from None


def _parse_pci_address(node: etree._Element) -> PciAddress:
    limits = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 7}
    values = {}
    for name, limit in limits.items():
        value = _parse_int(node, name, 0) or 0
        if not 0 <= value <= limit:
            raise XmlError(f"Invalid PCI address {name}='0x{value:x}', must be <= 0x{limit:X}")
        values[name] = value
    return PciAddress(**values)


def _parse_adapter(node: etree._Element) -> Adapter:
    """libvirt's virStorageAdapterParseXML."""
    kind = attr(node, "type")
    if kind is None:
        # Legacy form: only a name, meaning a scsi_host.
        if any(attr(node, a) is not None for a in ("wwnn", "wwpn", "parent")):
            raise XmlError(
                "Use of 'wwnn', 'wwpn', and 'parent' attributes requires use of the adapter 'type'"
            )
        if node.find("parentaddr") is not None:
            raise XmlError("Use of 'parentaddr' element requires use of the adapter 'type'")
        name = attr(node, "name")
        return Adapter(type="scsi_host" if name is not None else "", name=name)
    if kind == "fc_host":
        return Adapter(
            type=kind,
            parent=attr(node, "parent"),
            managed=parse_tristate(node, "managed"),
            parent_wwnn=attr(node, "parent_wwnn"),
            parent_wwpn=attr(node, "parent_wwpn"),
            parent_fabric_wwn=attr(node, "parent_fabric_wwn"),
            wwnn=attr(node, "wwnn"),
            wwpn=attr(node, "wwpn"),
        )
    if kind == "scsi_host":
        adapter = Adapter(type=kind, name=attr(node, "name"))
        parentaddr = node.find("parentaddr")
        if parentaddr is not None:
            address = parentaddr.find("address")
            if address is None:
                raise XmlError("Missing scsi_host PCI address element")
            adapter.parent_address = _parse_pci_address(address)
            unique_id = attr(parentaddr, "unique_id")
            try:
                adapter.unique_id = int((unique_id or "").strip())
            except ValueError:
                adapter.unique_id = -1
            if adapter.unique_id < 0:
                raise XmlError("Missing or invalid scsi adapter 'unique_id' value")
        return adapter
    raise XmlError(f"Unknown pool adapter type '{kind}'")


def _check_wwn(value: str) -> None:
    if not _WWN.fullmatch(value):
        raise XmlError(f"Malformed wwn: {value}")


def validate_adapter(adapter: Adapter | None) -> None:
    """libvirt's virStorageAdapterValidate (for scsi pools)."""
    if adapter is None or not adapter.type:
        raise XmlError("missing storage pool source adapter")
    if adapter.type == "fc_host":
        if not adapter.wwnn or not adapter.wwpn:
            raise XmlError("'wwnn' and 'wwpn' must be specified for adapter type 'fchost'")
        _check_wwn(adapter.wwnn)
        _check_wwn(adapter.wwpn)
        if adapter.parent_wwnn and not adapter.parent_wwpn:
            raise XmlError(
                f"when providing parent_wwnn='{adapter.parent_wwnn}', "
                "the parent_wwpn must also be provided"
            )
        if adapter.parent_wwpn and not adapter.parent_wwnn:
            raise XmlError(
                f"when providing parent_wwpn='{adapter.parent_wwpn}', "
                "the parent_wwnn must also be provided"
            )
        for wwn in (adapter.parent_wwnn, adapter.parent_wwpn, adapter.parent_fabric_wwn):
            if wwn:
                _check_wwn(wwn)
    elif adapter.type == "scsi_host":
        has_parent = adapter.parent_address is not None
        if not adapter.name and not has_parent:
            raise XmlError(
                "Either 'name' or 'parent' must be specified for the 'scsi_host' adapter"
            )
        if adapter.name and has_parent:
            raise XmlError(
                "Both 'name' and 'parent' cannot be specified for the 'scsi_host' adapter"
            )


def _parse_auth(node: etree._Element) -> Auth:
    """libvirt's virStorageAuthDefParse, plus the pool's "type required" rule."""
    username = attr(node, "username")
    if not username:
        raise XmlError("missing username for auth")
    kind = attr(node, "type") or None
    if kind is not None and kind not in _AUTH_TYPES:
        raise XmlError(f"unknown auth type '{kind}'")
    secret = node.find("secret")
    if secret is None:
        raise XmlError("Missing <secret> element in auth")
    ref = parse_secret(secret)
    if kind in (None, "none"):
        raise XmlError("storage pool missing auth type")
    return Auth(type=kind, username=username, secret=ref)


def parse_source(node: etree._Element | None, pool_type: str, info: PoolTypeInfo) -> PoolSource:
    """libvirt's virStoragePoolDefParseSource (node None: no <source> at all)."""
    src = PoolSource(format=info.default_source_format)
    if node is None:
        return src
    src.name = text(node, "name")
    if pool_type == "rbd" and src.name is None:
        raise XmlError("element 'name' is mandatory for RBD pool")
    if info.source_formats:
        fmt = attr(first(node, "format"), "type") or None
        if fmt is not None:
            if fmt not in info.source_formats:
                raise XmlError(f"unknown pool format type {fmt}")
            src.format = fmt
    for host in node.findall("host"):
        name = attr(host, "name")
        if name is None:
            raise XmlError("missing storage pool host name")
        src.hosts.append(SourceHost(name=name, port=_parse_int(host, "port")))
    src.initiator_iqn = attr(first(node, "initiator/iqn"), "name") or None
    for device in node.findall("device"):
        path = attr(device, "path")
        if path is None:
            raise XmlError("missing storage pool source device path")
        src.devices.append(SourceDevice(path, parse_tristate(device, "part_separator")))
    directory = attr(first(node, "dir"), "path")
    if directory:
        src.dir = sanitize_path(directory)
    elif pool_type == "gluster":
        src.dir = "/"  # in gluster, a missing dir means the volume's root
    adapter = node.find("adapter")
    if adapter is not None:
        src.adapter = _parse_adapter(adapter)
    auth = node.find("auth")
    if auth is not None:
        src.auth = _parse_auth(auth)
    src.protocol_ver = attr(first(node, "protocol"), "ver") or None
    if src.protocol_ver is not None:
        if pool_type != "netfs" or src.format not in ("nfs", "auto"):
            shown = src.format if pool_type == "netfs" else pool_type
            raise XmlError(f"storage pool protocol ver unsupported for pool type '{shown}'")
        if "," in src.protocol_ver:
            raise XmlError(f"storage pool protocol ver '{src.protocol_ver}' must not contain ','")
    src.vendor = attr(first(node, "vendor"), "name") or None
    src.product = attr(first(node, "product"), "name") or None
    return src


def _write_adapter(out: Writer, adapter: Adapter) -> None:
    head = f"<adapter type='{adapter.type}'"
    if adapter.type == "fc_host":
        parts = [head]
        if adapter.parent is not None:
            parts.append(f" parent='{escape(adapter.parent)}'")
        if adapter.managed is not None:
            parts.append(f" managed='{'yes' if adapter.managed else 'no'}'")
        for name in ("parent_wwnn", "parent_wwpn", "parent_fabric_wwn"):
            value = getattr(adapter, name)
            if value is not None:
                parts.append(f" {name}='{escape(value)}'")
        parts.append(f" wwnn='{escape(adapter.wwnn or '')}' wwpn='{escape(adapter.wwpn or '')}'/>")
        out.line("".join(parts))
    elif adapter.name:
        out.line(f"{head} name='{escape(adapter.name)}'/>")
    else:
        addr = adapter.parent_address or PciAddress()
        out.open(f"{head}>")
        out.open(f"<parentaddr unique_id='{adapter.unique_id or 0}'>")
        out.line(
            f"<address domain='0x{addr.domain:04x}' bus='0x{addr.bus:02x}' "
            f"slot='0x{addr.slot:02x}' function='0x{addr.function}'/>"
        )
        out.close("</parentaddr>")
        out.close("</adapter>")


def write_source(out: Writer, src: PoolSource, info: PoolTypeInfo) -> None:
    """libvirt's virStoragePoolSourceFormat."""
    out.open("<source>")
    if info.has(SOURCE_HOST):
        for host in src.hosts:
            port = f" port='{host.port}'" if host.port else ""
            out.line(f"<host name='{escape(host.name)}'{port}/>")
    if info.has(SOURCE_DEVICE):
        for dev in src.devices:
            head = f"<device path='{escape(dev.path)}'"
            if dev.part_separator is not None:
                head += f" part_separator='{'yes' if dev.part_separator else 'no'}'"
            if dev.free_extents:
                out.open(head + ">")
                for ext in dev.free_extents:
                    out.line(f"<freeExtent start='{ext.start}' end='{ext.end}'/>")
                out.close("</device>")
            else:
                out.line(head + "/>")
    if info.has(SOURCE_DIR) and src.dir is not None:
        out.line(f"<dir path='{escape(src.dir)}'/>")
    if info.has(SOURCE_ADAPTER) and src.adapter is not None and src.adapter.type:
        _write_adapter(out, src.adapter)
    if info.has(SOURCE_NAME) and src.name is not None:
        out.line(f"<name>{escape(src.name)}</name>")
    if info.has(SOURCE_INITIATOR_IQN) and src.initiator_iqn is not None:
        out.open("<initiator>")
        out.line(f"<iqn name='{escape(src.initiator_iqn)}'/>")
        out.close("</initiator>")
    if info.source_formats:
        out.line(f"<format type='{escape(src.format or info.default_source_format or '')}'/>")
    if src.auth is not None:
        out.open(f"<auth type='{escape(src.auth.type)}' username='{escape(src.auth.username)}'>")
        write_secret(out, src.auth.secret)
        out.close("</auth>")
    if src.protocol_ver is not None:
        out.line(f"<protocol ver='{escape(src.protocol_ver)}'/>")
    if src.vendor is not None:
        out.line(f"<vendor name='{escape(src.vendor)}'/>")
    if src.product is not None:
        out.line(f"<product name='{escape(src.product)}'/>")
    out.close("</source>")
