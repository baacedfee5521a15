"""A volume's ``<encryption>`` (libvirt's storage_encryption_conf.c).

The passphrase itself never appears here: ``<secret>`` only names a libvirt
secret by uuid or usage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from .common import SecretRef, Writer, attr, escape, parse_secret, write_secret
from .safe import XmlError

__all__ = ["ENCRYPTION_FORMATS", "Encryption", "parse_encryption", "write_encryption"]

ENCRYPTION_FORMATS = ("default", "qcow", "luks", "luks2", "luks-any")
_ENGINES = ("qemu", "librbd")  # "default" is refused on input, as in libvirt


@dataclass
class Encryption:
    format: str = "luks"
    #: None: the default engine
    engine: str | None = None
    secrets: list[SecretRef] = field(default_factory=list)
    #: luks only: <cipher name= size= mode= hash=/>
    cipher_name: str | None = None
    cipher_size: int | None = None
    cipher_mode: str | None = None
    cipher_hash: str | None = None
    #: luks only: <ivgen name= hash=/>
    ivgen_name: str | None = None
    ivgen_hash: str | None = None


def parse_encryption(node: etree._Element) -> Encryption:
    """libvirt's virStorageEncryptionParseNode."""
    fmt = attr(node, "format") or None
    if fmt is None:
        raise XmlError("unknown volume encryption format")
    if fmt not in ENCRYPTION_FORMATS:
        raise XmlError(f"unknown volume encryption format type {fmt}")
    enc = Encryption(format=fmt)
    engine = attr(node, "engine")
    if engine is not None:
        if engine not in _ENGINES:
            raise XmlError(
                f"Invalid value for attribute 'engine' in element 'encryption': '{engine}'."
            )
        enc.engine = engine
    for secret in node.findall("secret"):
        kind = attr(secret, "type") or None
        if kind is None:
            raise XmlError("unknown volume encryption secret type")
        if kind != "passphrase":
            raise XmlError(f"unknown volume encryption secret type {kind}")
        enc.secrets.append(parse_secret(secret))
    if fmt == "luks":
        cipher = node.find("cipher")
        if cipher is not None:
            enc.cipher_name = attr(cipher, "name")
            if enc.cipher_name is None:
                raise XmlError("cipher info missing 'name' attribute")
            size = attr(cipher, "size")
            if size is None:
                raise XmlError("Missing required attribute 'size' in element 'cipher'")
            if not re.fullmatch(r"\s*\+?[0-9]{1,10}\s*", size) or int(size) > 0xFFFFFFFF:
                raise XmlError(
                    f"Invalid value for attribute 'size' in element 'cipher': '{size}'. "
                    "Expected non-negative integer value"
                )
            enc.cipher_size = int(size)
            enc.cipher_mode = attr(cipher, "mode")
            enc.cipher_hash = attr(cipher, "hash")
        ivgen = node.find("ivgen")
        if ivgen is not None:
            if enc.cipher_name is None:
                raise XmlError("ivgen element found, but cipher is missing")
            enc.ivgen_name = attr(ivgen, "name")
            if enc.ivgen_name is None:
                raise XmlError("missing ivgen info name string")
            enc.ivgen_hash = attr(ivgen, "hash")
    return enc


def write_encryption(out: Writer, enc: Encryption) -> None:
    """libvirt's virStorageEncryptionFormat."""
    engine = f" engine='{escape(enc.engine)}'" if enc.engine else ""
    out.open(f"<encryption format='{escape(enc.format)}'{engine}>")
    for secret in enc.secrets:
        write_secret(out, SecretRef(uuid=secret.uuid, usage=secret.usage, type="passphrase"))
    if enc.format == "luks" and enc.cipher_name is not None:
        cipher = f"<cipher name='{escape(enc.cipher_name)}' size='{enc.cipher_size or 0}'"
        if enc.cipher_mode is not None:
            cipher += f" mode='{escape(enc.cipher_mode)}'"
        if enc.cipher_hash is not None:
            cipher += f" hash='{escape(enc.cipher_hash)}'"
        out.line(cipher + "/>")
        if enc.ivgen_name is not None:
            ivgen = f"<ivgen name='{escape(enc.ivgen_name)}'"
            if enc.ivgen_hash is not None:
                ivgen += f" hash='{escape(enc.ivgen_hash)}'"
            out.line(ivgen + "/>")
    out.close("</encryption>")
