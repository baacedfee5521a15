"""Documents storagefs generates: live pool and volume XML from definitions and figures."""

from __future__ import annotations

import dataclasses

from ..backends.base import FileStat, PoolInfo, VolumeInfo
from ..xml.common import Permissions
from ..xml.pool import PoolDef, format_pool


def pool_status(defn: PoolDef, uuid: str, info: PoolInfo) -> bytes:
    """``virsh pool-dumpxml``: uuid, sizes and the target's real permissions (from the
    figures last refreshed in the background)."""
    perms = defn.target_permissions
    if defn.target_path and info.target_perms is not None:
        mode, uid, gid = info.target_perms
        perms = Permissions(mode, uid, gid, perms.label if perms else None)
    shown = dataclasses.replace(defn, uuid=uuid, target_permissions=perms)
    return format_pool(shown, capacity=info.capacity, allocation=info.allocation,
                       available=info.available, extensions=False).encode()


def shown_format(info: VolumeInfo) -> str:
    """The volume format as libvirt names it: a LUKS file is raw with <encryption>."""
    return "raw" if info.format == "luks" else info.format


def volume_encryption(info: VolumeInfo, config: bytes | None, defn: PoolDef):
    """The <encryption> of an encrypted volume, as ``virsh vol-dumpxml`` shows it: the
    format the image has, with the secret named by the document on record (if any)."""
    from ..xml.encryption import Encryption
    from ..xml.volume import parse_volume

    if not (info.encrypted or info.format == "luks"):
        return None
    fmt = "luks" if info.format == "luks" else info.options.get("encryption", "luks")
    enc = Encryption(format=fmt)
    if config is not None:
        try:
            recorded = parse_volume(config, defn).target.encryption
        except ValueError:
            recorded = None
        if recorded is not None:
            enc.secrets = recorded.secrets
            if recorded.format == fmt:  # the cipher it was made with
                enc.cipher_name, enc.cipher_size = recorded.cipher_name, recorded.cipher_size
                enc.cipher_mode, enc.cipher_hash = recorded.cipher_mode, recorded.cipher_hash
                enc.ivgen_name, enc.ivgen_hash = recorded.ivgen_name, recorded.ivgen_hash
    return enc


def volume_doc(defn: PoolDef, info: VolumeInfo, *, live: bool,
               config: bytes | None = None) -> bytes:
    """A volume's XML: the definition (live=False) or ``virsh vol-dumpxml`` (live=True);
    ``config`` is the document on record (it names an encrypted volume's secret)."""
    from ..xml import volume as xv

    f = info.file
    if f is None and info.type in ("file", "block"):
        f = FileStat()  # a node that is not there (yet): libvirt's defaults
    perms = Permissions(f.mode, f.uid, f.gid) if f is not None else None
    ts = None
    if live and f is not None:
        ts = xv.Timestamps(atime=_ts(f.atime_ns), mtime=_ts(f.mtime_ns),
                           ctime=_ts(f.ctime_ns), btime="0")
    backing = None
    if info.backing_path:
        backing = xv.BackingStore(path=info.backing_path, format=info.backing_format)
    vol = xv.VolumeDef(
        name=info.name, type=info.type, key=info.key if live else None,
        capacity=info.capacity, allocation=info.allocation if live else 0,
        physical=info.physical if live else None,
        target=xv.VolTarget(path=_target_path(info) if live else None, format=shown_format(info),
                            permissions=perms, timestamps=ts,
                            encryption=volume_encryption(info, config, defn)),
        backing=backing)
    return xv.format_volume(vol, defn).encode()


def _target_path(info: VolumeInfo) -> str | None:
    """<target><path>: the local node, or for a network volume what libvirt prints
    there (POOL/IMAGE of an RBD image)."""
    return info.path or (info.url if info.type == "network" else None)


def _ts(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
