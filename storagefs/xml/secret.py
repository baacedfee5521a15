"""libvirt secret XML: :func:`parse_secret` and :func:`format_secret`.

Parsing follows libvirt's ``virSecretParseXML`` (same defaults, same errors,
same wording); formatting is ``virSecretDefFormat`` byte for byte::

    <secret ephemeral='no' private='yes'>
      <uuid>f52a81b2-424e-490c-823d-6bd4235bc572</uuid>
      <description>Ceph secret</description>
      <usage type='ceph'>
        <name>CephCephCephCeph</name>
      </usage>
    </secret>

Only the definition is handled here; a secret's value never appears in its XML.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from .common import Writer, escape, load_root, parse_uuid, text
from .safe import XmlError

__all__ = ["USAGE_TYPES", "SecretDef", "format_secret", "parse_secret"]

_LABEL = "(definition_of_secret)"

#: usage type -> (child element of <usage> holding the usage id, libvirt's
#: "... specified, but ... is missing" wording)
_USAGE: dict[str, tuple[str, str]] = {
    "volume": ("volume", "volume usage specified, but volume path is missing"),
    "ceph": ("name", "Ceph usage specified, but name is missing"),
    "iscsi": ("target", "iSCSI usage specified, but target is missing"),
    "tls": ("name", "TLS usage specified, but name is missing"),
    "vtpm": ("name", "vTPM usage specified, but name is missing"),
}

#: the usage types a secret may have (libvirt's virSecretUsageType less "none")
USAGE_TYPES = tuple(_USAGE)


@dataclass
class SecretDef:
    """A secret definition (libvirt's virSecretDef)."""

    #: canonical lower-case form; None when the document has none (the caller
    #: assigns one, as libvirt generates one)
    uuid: str | None
    ephemeral: bool = False
    private: bool = False
    description: str | None = None
    #: volume | ceph | iscsi | tls | vtpm; None for no usage (libvirt's "none")
    usage_type: str | None = None
    #: the <volume>, <name> or <target> text of <usage>
    usage_id: str | None = None


def _yes_no(root: etree._Element, name: str) -> bool:
    """``virXPathString("string(./@NAME)")`` + virStringParseYesNo."""
    value = root.get(name)
    if not value:  # absent or empty: not set
        return False
    if value == "yes":
        return True
    if value == "no":
        return False
    raise XmlError(f"invalid value of '{name}'")


def _usage_type(root: etree._Element) -> str | None:
    """``virXPathString("string(./usage/@type)")``: the first such attribute in
    document order (a <usage> without one is passed over), "" counting as none."""
    for usage in root.iterfind("usage"):
        value = usage.get("type")
        if value is not None:
            return value or None
    return None


def parse_secret(data: bytes | etree._Element) -> SecretDef:
    """Parse a secret definition as libvirt's virSecretDefParseString.

    Raises :class:`XmlError` with libvirt's message, e.g. ``malformed uuid
    element``, ``unknown secret usage type foo`` or ``Ceph usage specified,
    but name is missing``.
    """
    root = load_root(data, "secret", _LABEL)
    secret = SecretDef(
        uuid=None,
        ephemeral=_yes_no(root, "ephemeral"),
        private=_yes_no(root, "private"),
    )

    raw_uuid = text(root, "uuid")
    if raw_uuid is not None:
        secret.uuid = parse_uuid(raw_uuid)
        if secret.uuid is None:
            raise XmlError("malformed uuid element")

    secret.description = text(root, "description")

    if root.find("usage") is not None:
        kind = _usage_type(root)
        if kind is None:
            raise XmlError("unknown secret usage type")
        if kind == "none":
            return secret
        if kind not in _USAGE:
            raise XmlError(f"unknown secret usage type {kind}")
        child, missing = _USAGE[kind]
        usage_id = text(root, f"usage/{child}")
        if usage_id is None:
            raise XmlError(missing)
        secret.usage_type = kind
        secret.usage_id = usage_id
    return secret


def format_secret(secret: SecretDef) -> str:
    """The secret as libvirt's virSecretDefFormat prints it.

    A secret without a uuid is printed without ``<uuid>`` (libvirt always has
    one).  Raises ValueError for a definition libvirt could not hold: a bad
    uuid, an unknown usage type, or a usage type without its usage id.
    """
    out = Writer()
    ephemeral = "yes" if secret.ephemeral else "no"
    private = "yes" if secret.private else "no"
    out.open(f"<secret ephemeral='{ephemeral}' private='{private}'>")
    if secret.uuid is not None:
        uuid = parse_uuid(secret.uuid)
        if uuid is None:
            raise ValueError(f"malformed secret uuid {secret.uuid!r}")
        out.line(f"<uuid>{uuid}</uuid>")
    if secret.description is not None:
        out.line(f"<description>{escape(secret.description)}</description>")
    kind = secret.usage_type
    if kind is not None and kind != "none":
        if kind not in _USAGE:
            raise ValueError(f"unknown secret usage type {kind!r}")
        if secret.usage_id is None:
            raise ValueError(f"secret usage type {kind!r} needs a usage id")
        child = _USAGE[kind][0]
        out.open(f"<usage type='{kind}'>")
        out.line(f"<{child}>{escape(secret.usage_id)}</{child}>")
        out.close("</usage>")
    out.close("</secret>")
    return out.getvalue()
