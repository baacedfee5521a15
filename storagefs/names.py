"""Rules for names of pools, volumes and snapshots (SPEC "Names are safe")."""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidArgument

MAX_NAME_BYTES = 255
#: hex digits of sha256 that end a shortened name (64 bits, as systemd's unit names)
HASH_DIGITS = 16
#: control characters (C0 and DEL); one regex search is 10x faster than a loop over
#: the name, and a refresh checks every file name of the pool
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str | bytes, what: str = "name") -> str:
    """Return ``name`` as str, or raise EINVAL for a name that is not safe.

    Refused: empty, leading dot (covers ``.`` and ``..``), ``/``, NUL, control
    characters, over 255 bytes, bytes that are not UTF-8.
    """
    if isinstance(name, bytes):
        raw = name
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{what} {raw!r} is not valid UTF-8") from None
    try:
        raw_len = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # surrogate escapes: the bytes were not UTF-8
        raise InvalidArgument(f"{what} {name!r} is not valid UTF-8") from None
    if not name:
        raise InvalidArgument(f"{what} is empty")
    if raw_len > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what} is {raw_len} bytes long; at most {MAX_NAME_BYTES}")
    if "/" in name:
        raise InvalidArgument(f"{what} {name!r} cannot contain '/'")
    if "\0" in name:
        raise InvalidArgument(f"{what} {name!r} cannot contain NUL")
    if name.startswith("."):
        raise InvalidArgument(f"{what} {name!r} cannot start with '.'")
    if _CONTROL.search(name):
        raise InvalidArgument(f"{what} {name!r} cannot contain control characters")
    return name


_UNSAFE = re.compile(rb"[^A-Za-z0-9:_./]")


def systemd_escape_path(path: str) -> str:
    """``systemd-escape --path``: strip slashes, '/' -> '-', unsafe bytes -> \\xNN (a
    leading '.' too). One regex pass: the link tables of 100,000 volumes escape every
    volume's path when they are rebuilt."""
    stripped = path.strip("/")
    while "//" in stripped:
        stripped = stripped.replace("//", "/")
    if not stripped:
        return "-"
    raw = _UNSAFE.sub(lambda m: b"\\x%02x" % m.group()[0],
                      stripped.encode("utf-8", "surrogateescape"))
    if raw.startswith(b"."):
        raw = b"\\x2e" + raw[1:]
    return raw.replace(b"/", b"-").decode("ascii")


def fit_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` when it fits in ``limit`` bytes (NAME_MAX); else its head, ``_`` and
    16 hex digits of the sha256 of the whole name, ``limit`` bytes at most.

    Like systemd's ``unit_name_hash_long`` for over-long unit names: the result is
    stable (a link keeps its name across remounts) and two long names that share a
    head still differ. Used for every name storagefs generates (link names)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:HASH_DIGITS]
    head = raw[:limit - HASH_DIGITS - 1].decode("utf-8", "ignore")  # whole characters
    return f"{head}_{digest}"
