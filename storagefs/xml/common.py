"""Pieces shared by the pool and volume XML code.

Reading follows libvirt's XPath idioms exactly, because the round trips are
compared byte for byte:

- ``virXPathString("string(./a/b)")`` is the string value of the *first*
  matching element, and an empty string counts as absent;
- ``virXMLPropString(node, "x")`` is the attribute as written ("" is kept).

Writing mimics libvirt's ``virBuffer``: two-space indentation, single-quoted
attributes, ``virBufferEscapeString`` escaping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from .safe import XmlError, parse_document

__all__ = [
    "Permissions",
    "SecretRef",
    "Writer",
    "attr",
    "escape",
    "first",
    "load_root",
    "parse_permissions",
    "parse_secret",
    "parse_tristate",
    "parse_uuid",
    "sanitize_path",
    "text",
    "write_permissions",
    "write_secret",
]

# uid_t/gid_t (unsigned 32-bit) -1, which libvirt also reads back as "unset".
_ID_UNSET = (-1, 0xFFFFFFFF)
_UUID_HEX = re.compile(r"[0-9A-Fa-f]{2}")
_ASCII_SPACE = " \t\n\r\v\f"


@dataclass
class Permissions:
    """``<permissions>``: None in a field means "not set" (libvirt's -1)."""

    mode: int | None = None
    owner: int | None = None
    group: int | None = None
    label: str | None = None

    def is_empty(self) -> bool:
        return self.mode is None and self.owner is None and self.group is None and not self.label


@dataclass
class SecretRef:
    """``<secret>`` naming a libvirt secret by uuid or by usage (exactly one)."""

    uuid: str | None = None
    usage: str | None = None
    #: the ``type`` attribute: 'passphrase' in <encryption>; optional in <auth>
    type: str | None = None


def escape(value: str) -> str:
    """libvirt's virBufferEscapeString (without dropping control characters,
    which XML cannot carry anyway)."""
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


class Writer:
    """A line buffer with libvirt's indentation rules."""

    def __init__(self, indent: int = 0) -> None:
        self.lines: list[str] = []
        self.indent = indent

    def line(self, text: str) -> None:
        self.lines.append(" " * self.indent + text)

    def open(self, text: str) -> None:
        self.line(text)
        self.indent += 2

    def close(self, text: str) -> None:
        self.indent -= 2
        self.line(text)

    def extend(self, other: Writer) -> None:
        self.lines.extend(other.lines)

    def getvalue(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def load_root(data: bytes | etree._Element, root_name: str, label: str) -> etree._Element:
    """Parse *data* safely (or take a parsed element) and check the root's name."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        root = parse_document(bytes(data), label=label)
    elif isinstance(data, etree._Element):
        root = data
    else:
        raise TypeError(f"expected bytes or an lxml element, not {type(data).__name__}")
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag != root_name:
        shown = etree.QName(root).localname if tag else "?"
        raise XmlError(f"expecting root element of '{root_name}', not '{shown}'")
    return root


def first(node: etree._Element | None, path: str) -> etree._Element | None:
    """First element matching *path* (ElementPath), like virXPathNode."""
    if node is None:
        return None
    return node.find(path)


def text(node: etree._Element | None, path: str | None = None) -> str | None:
    """String value of the first match of *path*; None when missing or empty."""
    target = node if path is None else first(node, path)
    if target is None:
        return None
    value = "".join(target.itertext())
    return value or None


def attr(node: etree._Element | None, name: str) -> str | None:
    """An attribute as written, or None."""
    if node is None:
        return None
    return node.get(name)


def parse_tristate(node: etree._Element | None, name: str) -> bool | None:
    """libvirt's virXMLPropTristateBool: 'yes'/'no' or absent."""
    value = attr(node, name)
    if value is None:
        return None
    if value == "yes":
        return True
    if value == "no":
        return False
    assert node is not None
    raise XmlError(f"Invalid value for attribute '{name}' in element '{node.tag}': '{value}'.")


def parse_uuid(value: str) -> str | None:
    """libvirt's virUUIDParse: 32 hex digits, '-' or ' ' allowed between pairs,
    surrounding whitespace ignored.  Returns the canonical lower-case form."""
    s = value.lstrip(_ASCII_SPACE)
    digits: list[str] = []
    i = 0
    while len(digits) < 16:
        if i < len(s) and s[i] in "- ":
            i += 1
            continue
        pair = s[i : i + 2]
        if not _UUID_HEX.fullmatch(pair):
            return None
        digits.append(pair.lower())
        i += 2
    if s[i:].strip(_ASCII_SPACE):
        return None
    d = "".join(digits)
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


def sanitize_path(path: str) -> str:
    """libvirt's virFileSanitizePath: collapse '//' runs and drop a trailing '/'.

    A leading '//' (exactly two) is kept, as POSIX allows it a meaning; URIs
    are left alone.
    """
    scheme = path.find("://")
    if scheme >= 0 and "/" not in path[:scheme]:
        return path
    prefix = ""
    rest = path
    if path.startswith("//") and not path.startswith("///"):
        prefix, rest = "//", path[2:]
    out = re.sub(r"/+", "/", rest)
    if len(out) > 1 and out.endswith("/"):
        out = out[:-1]
    return prefix + out


def _parse_id(node: etree._Element, name: str) -> int | None:
    """<owner>/<group>: a decimal number, -1 (or 2**32-1) meaning unset."""
    element = node.find(name)
    if element is None:
        return None
    raw = "".join(element.itertext()).strip()
    try:
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            raise ValueError(raw)
        value = int(raw, 10)
    except ValueError:
        raise XmlError(f"malformed {name} element") from None
    if value in _ID_UNSET:
        return None
    if not 0 <= value <= 0xFFFFFFFF:
        raise XmlError(f"malformed {name} element")
    return value


def parse_permissions(node: etree._Element | None) -> Permissions | None:
    """libvirt's virStorageDefParsePerms; None when there is no <permissions>."""
    if node is None:
        return None
    perms = Permissions()
    mode = text(node, "mode")
    if mode is not None:
        raw = mode.strip()
        if not re.fullmatch(r"[+-]?[0-7]+", raw) or not 0 <= int(raw, 8) <= 0o777:
            raise XmlError("malformed octal mode")
        perms.mode = int(raw, 8)
    perms.owner = _parse_id(node, "owner")
    perms.group = _parse_id(node, "group")
    perms.label = text(node, "label")
    return perms


def write_permissions(out: Writer, perms: Permissions | None) -> None:
    """The <permissions> block, omitted when nothing is set."""
    if perms is None or perms.is_empty():
        return
    out.open("<permissions>")
    if perms.mode is not None:
        out.line(f"<mode>0{perms.mode:o}</mode>")
    if perms.owner is not None:
        out.line(f"<owner>{perms.owner}</owner>")
    if perms.group is not None:
        out.line(f"<group>{perms.group}</group>")
    if perms.label:
        out.line(f"<label>{escape(perms.label)}</label>")
    out.close("</permissions>")


def parse_secret(node: etree._Element) -> SecretRef:
    """libvirt's virSecretLookupParseSecret (the type attribute is kept as is)."""
    uuid = attr(node, "uuid")
    usage = attr(node, "usage")
    if uuid is None and usage is None:
        raise XmlError("missing secret uuid or usage attribute")
    if uuid is not None and usage is not None:
        raise XmlError("either secret uuid or usage expected")
    ref = SecretRef(type=attr(node, "type"))
    if uuid is not None:
        ref.uuid = parse_uuid(uuid)
        if ref.uuid is None:
            raise XmlError(f"invalid secret uuid '{uuid}'")
    else:
        ref.usage = usage
    return ref


def write_secret(out: Writer, secret: SecretRef) -> None:
    """libvirt's virSecretLookupFormatSecret."""
    head = f"<secret type='{escape(secret.type)}'" if secret.type is not None else "<secret"
    if secret.uuid is not None:
        out.line(f"{head} uuid='{secret.uuid}'/>")
    elif secret.usage is not None:
        out.line(f"{head} usage='{escape(secret.usage)}'/>")
    else:
        out.line(f"{head}/>")
