"""libvirt storage volume XML: :func:`parse_volume` and :func:`format_volume`.

A volume is always read and printed in the context of its pool, which decides
the formats allowed in ``<format type=...>`` (file formats for file-based
pools, partition types for disk pools, none at all for LVM, iSCSI ...) and the
default format.  Parsing follows libvirt's ``virStorageVolDefParseXML``;
formatting is ``virStorageVolDefFormat`` byte for byte.

As in libvirt, what only a refresh knows (timestamps, physical size, extents)
is ignored when reading a definition, and printed when set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from lxml import etree

from ..units import scale_integer
from .common import (
    Permissions,
    SecretRef,
    Writer,
    attr,
    escape,
    first,
    load_root,
    parse_permissions,
    text,
    write_permissions,
)
from .encryption import Encryption, parse_encryption, write_encryption
from .pool import PoolDef
from .pooltypes import POOL_TYPE_INFO, PoolTypeInfo, default_volume_type
from .safe import XmlError

__all__ = [
    "VOLUME_FEATURES",
    "VOLUME_TYPES",
    "BackingStore",
    "Encryption",
    "Extent",
    "Permissions",
    "SecretRef",
    "Timestamps",
    "VolTarget",
    "VolumeDef",
    "format_timestamp",
    "format_volume",
    "parse_volume",
]

_LABEL = "(storage_volume_definition)"
VOLUME_TYPES = ("file", "block", "dir", "network", "netdir", "ploop")
#: qcow2 features, in libvirt's (output) order
VOLUME_FEATURES = ("lazy_refcounts", "extended_l2")
_NUMBER = re.compile(r"\+?[0-9]+")


def format_timestamp(seconds: int, nanoseconds: int = 0) -> str:
    """A timestamp as libvirt prints it: ``SEC`` or ``SEC.NNNNNNNNN``."""
    return f"{seconds}.{nanoseconds:09d}" if nanoseconds else str(seconds)


@dataclass
class Timestamps:
    """<timestamps> of a live volume, each ``"sec"`` / ``"sec.nsec"`` (or int seconds)."""

    atime: str | int | None = None
    mtime: str | int | None = None
    ctime: str | int | None = None
    btime: str | int | None = None

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Timestamps:
        """From a stat() result; btime is 0 where the birth time is unknown,
        as libvirt prints it."""

        def ns(value: int) -> str:
            return format_timestamp(*divmod(value, 1_000_000_000))

        birth = getattr(st, "st_birthtime_ns", None)
        return cls(
            atime=ns(st.st_atime_ns),
            mtime=ns(st.st_mtime_ns),
            ctime=ns(st.st_ctime_ns),
            btime=ns(birth) if birth is not None else "0",
        )


@dataclass
class VolTarget:
    path: str | None = None
    #: None: the pool's default ("raw" for file pools, "none" for disk pools)
    format: str | None = None
    permissions: Permissions | None = None
    timestamps: Timestamps | None = None
    encryption: Encryption | None = None
    #: qcow2 compatibility level, "0.10" or "1.1"
    compat: str | None = None
    nocow: bool = False
    #: qcow2 cluster size in bytes
    cluster_size: int | None = None
    #: None: no <features>; [] prints <features/>; else names from VOLUME_FEATURES
    features: list[str] | None = None


@dataclass
class BackingStore:
    path: str
    format: str | None = None
    permissions: Permissions | None = None


@dataclass
class Extent:
    """Where a disk partition or logical volume lies on a device (from refresh)."""

    path: str
    start: int
    end: int


@dataclass
class VolumeDef:
    name: str = ""
    #: file, block, dir, network, netdir, ploop; None: the pool type's default
    type: str | None = None
    key: str | None = None
    #: bytes; None when the XML had none (allowed with no_capacity/opt_capacity)
    capacity: int | None = None
    #: bytes; None: not given (libvirt then takes the capacity: fully allocated)
    allocation: int | None = None
    #: bytes on the host (live XML only; printed when non-zero)
    physical: int | None = None
    target: VolTarget = field(default_factory=VolTarget)
    backing: BackingStore | None = None
    extents: list[Extent] = field(default_factory=list)


def _size(root: etree._Element, name: str) -> int | None:
    """libvirt's virStorageSize for <capacity>/<allocation> (unit attribute)."""
    value = text(root, name)
    if value is None:
        return None
    unit = attr(first(root, name), "unit") or None
    raw = value.strip()
    if not _NUMBER.fullmatch(raw) or len(raw) > 40:
        raise XmlError(f"malformed {name} element")
    try:
        return scale_integer(int(raw), unit)
    except ValueError as exc:
        raise XmlError(str(exc)) from None


def _cluster_size(root: etree._Element) -> int | None:
    """libvirt's virParseScaledValue for <clusterSize unit=...> (no upper limit)."""
    value = text(root, "target/clusterSize")
    if value is None:
        return None
    raw = value.strip()
    if not _NUMBER.fullmatch(raw) or len(raw) > 40:
        raise XmlError("could not parse element ./target/clusterSize")
    unit = attr(first(root, "target/clusterSize"), "unit") or None
    try:
        size = scale_integer(int(raw), unit, limit=(1 << 64) - 1)
    except ValueError as exc:
        raise XmlError(str(exc)) from None
    return size or None


def _check_compat(compat: str | None) -> None:
    if compat is None:
        return
    major, dot, minor = compat.partition(".")
    if not dot or not _NUMBER.fullmatch(major.strip()) or not _NUMBER.fullmatch(minor.strip()):
        raise XmlError("forbidden characters in 'compat' attribute")


def _volume_format(info: PoolTypeInfo, fmt: str | None) -> str | None:
    if not info.volume_formats:
        return None
    if fmt is None:
        return info.default_volume_format
    if fmt not in info.volume_formats:
        raise XmlError(f"unknown volume format type {fmt}")
    return fmt


def parse_volume(
    data: bytes | etree._Element,
    pool: PoolDef,
    *,
    no_capacity: bool = False,
    opt_capacity: bool = False,
) -> VolumeDef:
    """Parse and validate a volume definition for a volume of *pool*.

    *no_capacity* and *opt_capacity* are libvirt's VIR_VOL_XML_PARSE_NO_CAPACITY
    (capacity may be missing) and VIR_VOL_XML_PARSE_OPT_CAPACITY (it may be
    missing when there is a backing store).  Raises :class:`XmlError`.
    """
    root = load_root(data, "volume", _LABEL)
    info = POOL_TYPE_INFO[pool.type]
    vol = VolumeDef()
    name = text(root, "name")
    if name is None:
        raise XmlError("missing volume name element")
    if "/" in name:
        raise XmlError(f"volume name '{name}' cannot contain '/'")
    vol.name = name
    vol.key = text(root, "key")
    kind = attr(root, "type") or None
    if kind is not None and kind not in VOLUME_TYPES:
        raise XmlError(f"unknown volume type '{kind}'")
    vol.type = kind

    backing_path = text(root, "backingStore/path")
    if backing_path is not None:
        fmt = attr(first(root, "backingStore/format"), "type") or None
        vol.backing = BackingStore(
            path=backing_path,
            format=_volume_format(info, fmt),
            permissions=parse_permissions(first(root, "backingStore/permissions")),
        )

    vol.capacity = _size(root, "capacity")
    if vol.capacity is None and not no_capacity and not (opt_capacity and vol.backing):
        raise XmlError("missing capacity element")
    vol.allocation = _size(root, "allocation")

    target = vol.target
    target.path = text(root, "target/path")
    target.format = _volume_format(info, attr(first(root, "target/format"), "type") or None)
    target.permissions = parse_permissions(first(root, "target/permissions"))
    encryption = first(root, "target/encryption")
    if encryption is not None:
        target.encryption = parse_encryption(encryption)
    target.compat = text(root, "target/compat")
    _check_compat(target.compat)
    target.nocow = first(root, "target/nocow") is not None
    target.cluster_size = _cluster_size(root)
    if first(root, "target/features") is not None:
        if target.compat is None:
            target.compat = "1.1"
        features: set[str] = set()
        for node in root.findall("target/features/*"):
            feature = etree.QName(node).localname
            if feature not in VOLUME_FEATURES:
                raise XmlError(f"unsupported feature {feature}")
            features.add(feature)
        target.features = [f for f in VOLUME_FEATURES if f in features]
    return vol


def _write_target(
    out: Writer, info: PoolTypeInfo, tag: str, target: VolTarget | BackingStore
) -> None:
    out.open(f"<{tag}>")
    if target.path is not None:
        out.line(f"<path>{escape(target.path)}</path>")
    if info.volume_formats:
        fmt = target.format or info.default_volume_format or "none"
        out.line(f"<format type='{escape(fmt)}'/>")
    write_permissions(out, target.permissions)
    if isinstance(target, VolTarget):
        stamps = target.timestamps
        if stamps is not None:
            out.open("<timestamps>")
            for name in ("atime", "mtime", "ctime", "btime"):
                value = getattr(stamps, name)
                if value is not None:
                    out.line(f"<{name}>{escape(str(value))}</{name}>")
            out.close("</timestamps>")
        if target.encryption is not None:
            write_encryption(out, target.encryption)
        if target.compat is not None:
            out.line(f"<compat>{escape(target.compat)}</compat>")
        if target.cluster_size:
            out.line(f"<clusterSize unit='B'>{target.cluster_size}</clusterSize>")
        if target.features is not None:
            wanted = [f for f in VOLUME_FEATURES if f in target.features]
            if wanted:
                out.open("<features>")
                for feature in wanted:
                    out.line(f"<{feature}/>")
                out.close("</features>")
            else:
                out.line("<features/>")
    out.close(f"</{tag}>")


def format_volume(vol: VolumeDef, pool: PoolDef) -> str:
    """The volume as libvirt's virStorageVolDefFormat prints it (for *pool*)."""
    info = POOL_TYPE_INFO.get(pool.type)
    if info is None:
        raise ValueError(f"unknown pool type {pool.type!r}")
    out = Writer()
    out.open(f"<volume type='{vol.type or default_volume_type(pool.type)}'>")
    out.line(f"<name>{escape(vol.name)}</name>")
    if vol.key is not None:
        out.line(f"<key>{escape(vol.key)}</key>")
    if vol.extents:
        out.open("<source>")
        current: str | None = None
        for extent in vol.extents:
            if extent.path != current:
                if current is not None:
                    out.close("</device>")
                out.open(f"<device path='{escape(extent.path)}'>")
                current = extent.path
            out.line(f"<extent start='{extent.start}' end='{extent.end}'/>")
        out.close("</device>")
        out.close("</source>")
    capacity = vol.capacity or 0
    allocation = vol.allocation if vol.allocation is not None else capacity
    out.line(f"<capacity unit='bytes'>{capacity}</capacity>")
    out.line(f"<allocation unit='bytes'>{allocation}</allocation>")
    if vol.physical:
        out.line(f"<physical unit='bytes'>{vol.physical}</physical>")
    _write_target(out, info, "target", vol.target)
    if vol.backing is not None:
        _write_target(out, info, "backingStore", vol.backing)
    out.close("</volume>")
    return out.getvalue()
