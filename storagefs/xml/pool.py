"""libvirt storage pool XML: :func:`parse_pool` and :func:`format_pool`.

Parsing follows libvirt's ``virStoragePoolDefParseXML`` rule for rule (same
defaults, same errors, same wording); formatting is ``virStoragePoolDefFormat``
byte for byte, so a document libvirt prints can be written here and the other
way round.

storagefs's own settings live in the :data:`STORAGEFS_NS` namespace, as a
child of ``<pool>``::

    <storagefs:volume-defaults xmlns:storagefs="https://storagefs.org/xmlns/pool/1.0"
                               format="qcow2" capacity="10G"/>

They are printed only with ``extensions=True``: libvirt's RELAX NG schema does
not know the namespace, and ``status.xml`` must validate against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from ..units import parse_size
from .common import (
    Permissions,
    Writer,
    attr,
    escape,
    first,
    load_root,
    parse_permissions,
    parse_tristate,
    parse_uuid,
    sanitize_path,
    text,
    write_permissions,
)
from .poolsource import (
    Adapter,
    Auth,
    FreeExtent,
    PciAddress,
    PoolSource,
    SourceDevice,
    SourceHost,
    parse_source,
    validate_adapter,
    write_source,
)
from .pooltypes import (
    POOL_TYPE_INFO,
    POOL_TYPES,
    SOURCE_ADAPTER,
    SOURCE_DEVICE,
    SOURCE_DIR,
    SOURCE_HOST,
    SOURCE_NAME,
    SOURCE_NETWORK,
)
from .safe import XmlError, parse_document

__all__ = [
    "FS_NS",
    "POOL_TYPES",
    "RBD_NS",
    "STORAGEFS_NS",
    "Adapter",
    "Auth",
    "FreeExtent",
    "PciAddress",
    "Permissions",
    "PoolDef",
    "PoolSource",
    "SourceDevice",
    "SourceHost",
    "format_pool",
    "parse_pool",
    "rename_document",
]

#: storagefs's own XML namespace for pool settings libvirt does not have.
STORAGEFS_NS = "https://storagefs.org/xmlns/pool/1.0"
#: libvirt's namespace for fs/netfs mount options.
FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"
#: libvirt's namespace for RBD (Ceph) client configuration options.
RBD_NS = "http://libvirt.org/schemas/storagepool/rbd/1.0"

_LABEL = "(storage_pool_definition)"
_NO_TARGET = ("rbd", "sheepdog", "gluster", "iscsi-direct")
_REFRESH_ALLOCATION = ("default", "capacity")


@dataclass
class PoolDef:
    """A storage pool definition (what ``config.xml`` holds)."""

    type: str = "dir"
    name: str = ""
    #: None until one is assigned (libvirt generates one when the XML has none)
    uuid: str | None = None
    source: PoolSource = field(default_factory=PoolSource)
    #: None for pools without a local target (rbd, sheepdog, gluster, iscsi-direct)
    target_path: str | None = None
    target_permissions: Permissions | None = None
    #: <features><cow state=.../>: btrfs copy-on-write for dir/fs pools
    cow: bool | None = None
    #: <refresh><volume allocation=.../>: "default" or "capacity" (rbd)
    refresh_allocation: str | None = None
    #: fs/netfs pools: <fs:mount_opts><fs:option name=.../>
    mount_opts: list[str] = field(default_factory=list)
    #: rbd pools: <rbd:config_opts><rbd:option name=... value=.../>
    config_opts: list[tuple[str, str]] = field(default_factory=list)
    #: storagefs: format of a volume made by mkdir (None: the pool type's default)
    default_volume_format: str | None = None
    #: storagefs: capacity in bytes of a volume made by mkdir
    default_volume_capacity: int | None = None


def _parse_type(root: etree._Element) -> str:
    kind = attr(root, "type")
    if kind is None:
        raise XmlError("Missing required attribute 'type' in element 'pool'")
    if kind not in POOL_TYPES:
        raise XmlError(f"Invalid value for attribute 'type' in element 'pool': '{kind}'.")
    return kind


def _parse_namespaces(root: etree._Element, pool: PoolDef) -> None:
    if pool.type in ("fs", "netfs"):
        for option in root.findall(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option"):
            name = attr(option, "name")
            if name is None:
                raise XmlError("no fs mount option name specified")
            pool.mount_opts.append(name)
    if pool.type == "rbd":
        for option in root.findall(f"{{{RBD_NS}}}config_opts/{{{RBD_NS}}}option"):
            name, value = attr(option, "name"), attr(option, "value")
            if name is None:
                raise XmlError("no rbd option name specified")
            if value is None:
                raise XmlError("no rbd option value specified")
            pool.config_opts.append((name, value))


def _parse_storagefs(root: etree._Element, pool: PoolDef) -> None:
    node = root.find(f"{{{STORAGEFS_NS}}}volume-defaults")
    if node is None:
        return
    info = POOL_TYPE_INFO[pool.type]
    fmt = attr(node, "format")
    if fmt is not None:
        if not info.volume_formats:
            raise XmlError(f"volume-defaults: pool type '{pool.type}' has no volume formats")
        if fmt not in info.volume_formats:
            raise XmlError(f"volume-defaults: unknown volume format type {fmt}")
        pool.default_volume_format = fmt
    capacity = attr(node, "capacity")
    if capacity is not None:
        try:
            pool.default_volume_capacity = parse_size(capacity)
        except ValueError as exc:
            raise XmlError(f"volume-defaults capacity: {exc}") from None


def parse_pool(data: bytes | etree._Element) -> PoolDef:
    """Parse and validate a pool definition as libvirt's virStoragePoolDefParseXML.

    Raises :class:`XmlError` with libvirt's message, e.g. ``missing storage
    pool target path`` or ``name a/b cannot contain '/'``.
    """
    root = load_root(data, "pool", _LABEL)
    kind = _parse_type(root)
    info = POOL_TYPE_INFO[kind]
    pool = PoolDef(type=kind)
    pool.source = src = parse_source(root.find("source"), kind, info)

    name = text(root, "name")
    if name is None and info.has(SOURCE_NAME):
        name = src.name
    if name is None:
        raise XmlError("missing pool source name element")
    if "/" in name:
        raise XmlError(f"name {name} cannot contain '/'")
    pool.name = name

    uuid = text(root, "uuid")
    if uuid is not None:
        pool.uuid = parse_uuid(uuid)
        if pool.uuid is None:
            raise XmlError("malformed uuid element")

    cow = parse_tristate(first(root, "features/cow"), "state")
    if cow is not None and kind not in ("fs", "dir"):
        raise XmlError("cow feature may only be used for 'fs' and 'dir' pools")
    pool.cow = cow

    if info.has(SOURCE_HOST) and not src.hosts:
        raise XmlError("missing storage pool source host name")
    if info.has(SOURCE_DIR) and not src.dir:
        raise XmlError("missing storage pool source path")
    if info.has(SOURCE_NAME) and src.name is None:
        src.name = pool.name  # the source name defaults to the pool name
    if info.has(SOURCE_ADAPTER):
        validate_adapter(src.adapter)
    if info.flags == SOURCE_DEVICE and not src.devices:
        raise XmlError("missing storage pool source device name")

    if not info.has(SOURCE_NETWORK):
        if kind == "logical":
            target = f"/dev/{src.name}"
        elif kind == "zfs":
            target = f"/dev/zvol/{src.name}"
        else:
            given = text(root, "target/path")
            if given is None:
                raise XmlError("missing storage pool target path")
            target = given
        pool.target_path = sanitize_path(target)
        pool.target_permissions = parse_permissions(first(root, "target/permissions"))

    if kind == "iscsi-direct" and not src.initiator_iqn:
        raise XmlError("missing initiator IQN")

    allocation = attr(first(root, "refresh/volume"), "allocation") or None
    if allocation is not None and allocation not in _REFRESH_ALLOCATION:
        raise XmlError(f"unknown storage pool volume refresh allocation type {allocation}")
    pool.refresh_allocation = allocation

    _parse_namespaces(root, pool)
    _parse_storagefs(root, pool)
    return pool


def _write_storagefs(out: Writer, pool: PoolDef) -> None:
    attrs = ""
    if pool.default_volume_format is not None:
        attrs += f" format='{escape(pool.default_volume_format)}'"
    if pool.default_volume_capacity is not None:
        attrs += f" capacity='{pool.default_volume_capacity}'"
    if attrs:
        out.line(f"<storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_NS}'{attrs}/>")


def format_pool(
    pool: PoolDef,
    *,
    capacity: int = 0,
    allocation: int = 0,
    available: int = 0,
    extensions: bool = True,
) -> str:
    """The pool as libvirt's virStoragePoolDefFormat prints it.

    *capacity*, *allocation* and *available* are the live sizes in bytes (0 for
    a definition, as ``virsh pool-dumpxml --inactive`` of a new pool shows).
    ``extensions=False`` leaves out storagefs's own element.
    """
    info = POOL_TYPE_INFO.get(pool.type)
    if info is None:
        raise ValueError(f"unknown pool type {pool.type!r}")
    mount_opts = pool.mount_opts if pool.type in ("fs", "netfs") else []
    config_opts = pool.config_opts if pool.type == "rbd" else []
    xmlns = f" xmlns:fs='{FS_NS}'" if mount_opts else ""
    xmlns += f" xmlns:rbd='{RBD_NS}'" if config_opts else ""

    out = Writer()
    out.open(f"<pool type='{pool.type}'{xmlns}>")
    out.line(f"<name>{escape(pool.name)}</name>")
    if pool.uuid is not None:
        out.line(f"<uuid>{pool.uuid}</uuid>")
    out.line(f"<capacity unit='bytes'>{capacity}</capacity>")
    out.line(f"<allocation unit='bytes'>{allocation}</allocation>")
    out.line(f"<available unit='bytes'>{available}</available>")
    if pool.cow is not None:
        out.open("<features>")
        out.line(f"<cow state='{'yes' if pool.cow else 'no'}'/>")
        out.close("</features>")
    write_source(out, pool.source, info)
    if pool.type not in _NO_TARGET:
        out.open("<target>")
        if pool.target_path is not None:
            out.line(f"<path>{escape(pool.target_path)}</path>")
        write_permissions(out, pool.target_permissions)
        out.close("</target>")
    if pool.refresh_allocation is not None:
        out.open("<refresh>")
        out.line(f"<volume allocation='{escape(pool.refresh_allocation)}'/>")
        out.close("</refresh>")
    if mount_opts:
        out.open("<fs:mount_opts>")
        for option in mount_opts:
            out.line(f"<fs:option name='{escape(option)}'/>")
        out.close("</fs:mount_opts>")
    if config_opts:
        out.open("<rbd:config_opts>")
        for name, value in config_opts:
            out.line(f"<rbd:option name='{escape(name)}' value='{escape(value)}'/>")
        out.close("</rbd:config_opts>")
    if extensions:
        _write_storagefs(out, pool)
    out.close("</pool>")
    return out.getvalue()


def rename_document(xml: bytes, name: str) -> bytes:
    """The pool document with its ``<name>`` set to ``name`` and everything else kept
    (comments outside the root are dropped): a proposal from sources/ renamed, a libvirt
    definition imported under another name."""
    root = parse_document(xml)
    el = root.find("name")
    if el is None:
        el = etree.Element("name")
        el.tail = root.text
        root.insert(0, el)
    el.text = name
    return etree.tostring(root, encoding="unicode").encode() + b"\n"
