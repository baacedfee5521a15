"""What a volume should be (VolumeSpec): from a volume document, from the pool's
defaults, and the checks a document passes before anything changes."""

from __future__ import annotations

import re

from ..backends.base import VolumeSpec
from ..errors import InvalidArgument, NotSupported
from ..parsing import check_allocation
from ..state import StoredVolume
from ..xml.volume import parse_volume
from .objects import Pool, Volume

DEFAULT_CAPACITY = 1 << 30
_QEMU_WORD = re.compile(r"[A-Za-z0-9_-]{1,32}")


def recorded_format(spec: VolumeSpec) -> str:
    """The format a volume made from ``spec`` has: an encrypted raw volume is LUKS."""
    if spec.encryption and spec.format in (None, "raw"):
        return "luks"
    return spec.format


def stored_format(pool: Pool, sv: StoredVolume) -> str | None:
    """The recorded format; for a record of an older storagefs (a document and no
    format), the format its document names."""
    if sv.format or sv.config is None:
        return sv.format
    try:
        target = parse_volume(sv.config, pool.definition).target
    except ValueError:
        return None
    fmt = getattr(target, "format", None)
    if getattr(target, "encryption", None) is not None and fmt in (None, "raw"):
        return "luks"  # as FileVolumes.create makes an encrypted raw volume
    return fmt


def default_spec(pool: Pool, name: str) -> VolumeSpec:
    """mkdir's volume: the pool XML's storagefs defaults, else the backend's (a name
    suffix may imply a format: disk1.qcow2)."""
    defn, policy = pool.definition, pool.backend.policy
    fmt = policy.format_for_name(name) or getattr(defn, "default_volume_format", None) \
        or policy.default_format
    cap = getattr(defn, "default_volume_capacity", None) or DEFAULT_CAPACITY
    return VolumeSpec(name=name, format=fmt, capacity=cap)


def luks_options(enc) -> dict[str, str]:
    """qemu's LUKS creation options for libvirt's <cipher name size mode hash> and
    <ivgen name hash> (as libvirt's storage_util passes them); EINVAL for a value that
    is not a plain word (it goes into qemu-img's -o list)."""
    opts = {}
    if enc.cipher_name is not None:
        opts["cipher-alg"] = f"{enc.cipher_name}-{enc.cipher_size or 0}"
        if enc.cipher_mode:
            opts["cipher-mode"] = enc.cipher_mode
        if enc.cipher_hash:
            opts["hash-alg"] = enc.cipher_hash
    if enc.ivgen_name is not None:
        opts["ivgen-alg"] = enc.ivgen_name
        if enc.ivgen_hash:
            opts["ivgen-hash-alg"] = enc.ivgen_hash
    for key, value in opts.items():
        if not _QEMU_WORD.fullmatch(value):
            raise InvalidArgument(f"encryption {key} {value!r} is not a cipher name qemu knows")
    return opts


def spec_from_xml(vol: Volume, data: bytes) -> VolumeSpec:
    vdef = parse_volume(data, vol.pool.definition)
    if vdef.name != vol.name:
        raise InvalidArgument(f"volume name '{vdef.name}' in the document does not match "
                              f"the directory '{vol.name}'")
    target = vdef.target
    perms = getattr(target, "permissions", None)
    spec = VolumeSpec(
        name=vol.name,
        format=getattr(target, "format", None) or vol.info.format,
        capacity=vdef.capacity if vdef.capacity is not None else vol.info.capacity,
        allocation=vdef.allocation, type=vdef.type,
        mode=getattr(perms, "mode", None), uid=getattr(perms, "owner", None),
        gid=getattr(perms, "group", None))
    # before anything changes: a document half applied would leave a volume that
    # matches neither the old document nor the new one
    check_allocation(spec.capacity, spec.allocation)
    if spec.format == "qcow2":
        if target.compat:
            spec.options["compat"] = target.compat
        if target.features and "lazy_refcounts" in target.features:
            spec.options["lazy_refcounts"] = "on"
        if target.cluster_size:
            spec.options["cluster_size"] = str(target.cluster_size)
    if target.nocow and spec.format in ("qcow2", "raw", "vdi", "vpc", "vmdk"):
        spec.options["nocow"] = "on"
    if vdef.backing is not None and vdef.backing.path:
        spec.backing_path = vdef.backing.path
        spec.backing_format = vdef.backing.format or "raw"
    enc = getattr(target, "encryption", None)
    if enc is not None:
        if enc.format not in ("luks", "default"):
            raise NotSupported(f"encryption format '{enc.format}' is not supported; use luks")
        spec.encryption = "luks"
        spec.encrypt_options = luks_options(enc)
    return spec


def encryption_ref(data: bytes, pool: Pool):
    """The <secret> a volume document's <encryption> names (None: not encrypted)."""
    enc = getattr(parse_volume(data, pool.definition).target, "encryption", None)
    if enc is None:
        return None
    for ref in enc.secrets:
        return ref
    raise InvalidArgument("<encryption> names no <secret>")
