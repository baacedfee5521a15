"""Size units as libvirt understands them.

libvirt scales integers with ``virScaleInteger``: the unit is matched
case-insensitively, ``b``/``byte``/``bytes`` mean bytes, a single letter or a
letter followed by ``iB`` is a power of 1024 (``k``, ``KiB``, ``M``, ``MiB`` ...)
and a letter followed by ``B`` is a power of 1000 (``KB``, ``MB`` ...).  Values
are non-negative integers only (no fractions), and storage sizes are capped at
``LLONG_MAX`` because ``off_t`` is signed.

virsh accepts the unit glued to the number (``20G``); the XML carries it in a
``unit`` attribute.  :func:`parse_size` handles both.
"""

from __future__ import annotations

__all__ = ["LLONG_MAX", "UNITS", "parse_size", "scale_integer"]

#: Largest size libvirt accepts for a volume (2**63 - 1, the maximum ``off_t``).
LLONG_MAX = (1 << 63) - 1

_EXPONENTS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

#: The canonical spelling of every unit, with its scale (for documentation and tests).
UNITS: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    **{p.upper() + "B": 1000**e for p, e in _EXPONENTS.items()},
    **{p: 1024**e for p, e in _EXPONENTS.items()},
    **{p.upper(): 1024**e for p, e in _EXPONENTS.items()},
    **{p.upper() + "iB": 1024**e for p, e in _EXPONENTS.items()},
}

# A number longer than this is over any limit; checked before int() so that a
# megabyte of digits costs nothing.
_MAX_DIGITS = 40


def _unit_scale(suffix: str) -> int:
    """Scale for a non-empty unit suffix, or ValueError("unknown suffix 'X'")."""
    lower = suffix.lower()
    if lower in ("b", "byte", "bytes"):
        return 1
    if len(suffix) == 1 or lower[1:] == "ib":
        base = 1024
    elif len(suffix) == 2 and lower[1] == "b":
        base = 1000
    else:
        raise ValueError(f"unknown suffix '{suffix}'")
    exponent = _EXPONENTS.get(lower[0])
    if exponent is None:
        raise ValueError(f"unknown suffix '{suffix}'")
    return base**exponent


def scale_integer(value: int, suffix: str | None, *, scale: int = 1, limit: int = LLONG_MAX) -> int:
    """libvirt's ``virScaleInteger``: multiply *value* by the unit *suffix*.

    An empty or missing suffix means *scale* (bytes by default).  Raises
    ValueError with libvirt's wording: ``unknown suffix 'Q'`` or
    ``value too large: 9999999999E``.
    """
    if value < 0:
        raise ValueError("value must not be negative")
    factor = _unit_scale(suffix) if suffix else scale
    if value and value > limit // factor:
        raise ValueError(f"value too large: {value}{suffix or ''}")
    return value * factor


def parse_size(value: str, unit: str | None = None) -> int:
    """Parse a size such as ``"20G"``, ``"512MiB"``, ``"1048576"`` into bytes.

    *unit*, when given (as in ``<capacity unit='G'>10</capacity>``), applies to a
    bare number; a unit both glued to the number and given separately is an
    error.  Only non-negative integers are accepted, as in libvirt, and the
    result must not exceed 2**63-1.

    Raises ValueError with a one-line reason in virsh's style, e.g.
    ``Malformed size 12Q: unknown suffix 'Q'``.
    """
    text = value.strip()
    shown = text if unit is None else f"{text} {unit}"

    def fail(reason: str) -> ValueError:
        return ValueError(f"Malformed size {shown or repr(value)}: {reason}")

    if not text:
        raise fail("no number given")
    digits_end = 0
    while digits_end < len(text) and text[digits_end] in "0123456789":
        digits_end += 1
    digits, suffix = text[:digits_end], text[digits_end:]
    if not digits:
        if text[0] == "-":
            raise fail("sizes must not be negative")
        raise fail("not a number")
    if suffix[:1] in (".", ",") and suffix[1:2].isdigit():
        raise fail("sizes must be whole numbers")
    if suffix and unit:
        raise fail("unit given twice")
    if unit is not None:
        suffix = unit.strip()
    if len(digits) > _MAX_DIGITS:
        raise fail(f"value too large: {digits[:20]}...")
    try:
        return scale_integer(int(digits), suffix)
    except ValueError as exc:
        raise fail(str(exc)) from None
