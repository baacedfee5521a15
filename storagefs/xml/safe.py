"""Hardened parsing of untrusted XML.

Everything written into the file tree is untrusted: a document may be fed in
many small write() calls, may be endless, hostile (entity expansion, external
entities, absurd nesting) or simply broken.  This module is the only place that
turns bytes into an lxml tree, with these rules:

- no DTD at all: any ``<!DOCTYPE`` is refused, so no entity can be declared,
  expanded or fetched, and nothing is loaded from disk or network (lxml runs
  with entity resolution, DTD loading and network access off besides);
- UTF-8 (or ASCII, ISO-8859-1) only and no NUL byte, as libvirt reads XML as
  a C string: this keeps the byte-level pre-scan sound (a declared UTF-7 or
  UTF-16 could otherwise hide a DOCTYPE from it);
- at most :data:`MAX_DOCUMENT_BYTES` bytes, :data:`MAX_DEPTH` nested elements
  and :data:`MAX_ELEMENTS` elements;
- exactly one root element; after it only whitespace, comments and
  processing instructions;
- errors are :class:`XmlError` with a one-line reason, worded like libvirt's
  (``(storage_pool_definition):2: Premature end of data in tag pool line 1``).

:class:`IncrementalDocument` detects errors as soon as the bytes seen so far
can never become a well-formed document, so a writer gets EINVAL on the
offending write() rather than only at close().
"""

from __future__ import annotations

import re

from lxml import etree

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_ELEMENTS",
    "IncrementalDocument",
    "XmlError",
    "parse_document",
]

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ELEMENTS = 10_000

_NO_DTD = "DTDs and entity declarations are not allowed"
_LXML_POSITION = re.compile(r", line \d+, column \d+$")


class XmlError(ValueError):
    """A document was refused; ``str(err)`` is a one-line, human reason."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _syntax_message(exc: etree.XMLSyntaxError, label: str | None) -> str:
    """libvirt's wording for a libxml2 error: ``LABEL:LINE: MESSAGE``."""
    # exc.error_log is lxml's per-thread log (it accumulates other parses'
    # errors), so use the message of the error that was raised.  lxml appends
    # ", line L, column C" to it.
    message = _LXML_POSITION.sub("", exc.msg or str(exc))
    line = exc.lineno or 0
    prefix = f"{label}:{line}" if label else f"line {line}"
    return _one_line(f"{prefix}: {message}")


_PREDEFINED_ENTITIES = frozenset((b"amp", b"lt", b"gt", b"quot", b"apos"))
# Encodings in which every ASCII character is the ASCII byte, so that the byte
# scans here see the markup libxml2 will see.  (A declaration such as
# encoding="UTF-7" would otherwise smuggle a DOCTYPE past them.)
_ALLOWED_ENCODINGS = frozenset(("utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1"))
_BOM = b"\xef\xbb\xbf"
_XML_DECL = re.compile(rb"\A(?:\xef\xbb\xbf)?<\?xml\b(.*?)\?>", re.S)
_ENCODING = re.compile(rb"""encoding\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_REFERENCE = re.compile(rb"&([^;&<>\s'\"]{0,65})")
# Longer than any name that can resolve (predefined entities, character
# references with some leading zeros); bounds the bytes held back.
_MAX_REFERENCE = 64
_TEXT_STOP = re.compile(rb"[<&]")


class _Prescan:
    """A lexical pre-scan of the raw bytes, ahead of libxml2.

    It refuses, the moment they arrive, a ``<!DOCTYPE`` (or any other ``<!``
    declaration outside comments and CDATA), and references to entities that
    can never be defined: with no DTD only the five predefined entities and
    character references exist, and libxml2 (entity resolution off) silently
    stops at any other ``&name;`` instead of failing.  Sound because the
    document is in an ASCII-compatible encoding with no NUL byte (checked by
    the caller).
    """

    _ENDS = {"comment": b"-->", "cdata": b"]]>", "pi": b"?>"}
    _TAG_STOP = re.compile(rb"[\"'>]")
    _ATTR_STOP = {ord('"'): re.compile(rb'[&"]'), ord("'"): re.compile(rb"[&']")}

    def __init__(self) -> None:
        self.state = "text"
        self.quote = 0
        self.pending = b""
        self.offset = 0  # absolute offset of ``pending``'s first byte

    def scan(self, data: bytes) -> tuple[str, int] | None:
        """Scan more bytes; return (reason, absolute offset) of what must be refused."""
        buf = self.pending + data
        base = self.offset
        i, n = 0, len(buf)
        while i < n:
            state = self.state
            if state in self._ENDS:
                end = self._ENDS[state]
                j = buf.find(end, i)
                if j < 0:
                    i = max(i, n - len(end) + 1)
                    break
                i, self.state = j + len(end), "text"
                continue
            if state == "tag":
                m = self._TAG_STOP.search(buf, i)
                if m is None:
                    i = n
                    break
                if buf[m.start()] == ord(">"):
                    self.state = "text"
                else:
                    self.state, self.quote = "attr", buf[m.start()]
                i = m.end()
                continue
            stops = _TEXT_STOP if state == "text" else self._ATTR_STOP[self.quote]
            m = stops.search(buf, i)
            if m is None:
                i = n
                break
            j = m.start()
            if buf[j] == ord("&"):
                ref = _REFERENCE.match(buf, j)
                assert ref is not None  # the pattern matches an empty name too
                name = ref.group(1)
                if len(name) > _MAX_REFERENCE:
                    shown = name[:_MAX_REFERENCE].decode("utf-8", "replace")
                    return f"Entity '{shown}...' not defined", base + j
                if ref.end() == n:
                    i = j  # perhaps incomplete: wait for more bytes
                    break
                if buf[ref.end()] != ord(";") or not name:
                    i = j + 1  # malformed: libxml2 reports it
                    continue
                if not name.startswith(b"#") and name not in _PREDEFINED_ENTITIES:
                    entity = name.decode("utf-8", "replace")
                    return f"Entity '{entity}' not defined", base + j
                i = ref.end() + 1
            elif state == "attr":
                self.state, i = "tag", j + 1
            elif buf.startswith(b"<!--", j):
                self.state, i = "comment", j + 4
            elif buf.startswith(b"<![CDATA[", j):
                self.state, i = "cdata", j + 9
            elif n - j < 9 and (b"<!--".startswith(buf[j:]) or b"<![CDATA[".startswith(buf[j:])):
                i = j  # undecided until more bytes arrive
                break
            elif buf.startswith(b"<?", j):
                self.state, i = "pi", j + 2
            elif buf.startswith(b"<!", j):
                return _NO_DTD, base + j
            else:
                self.state, i = "tag", j + 1
        self.pending = buf[i:]
        self.offset = base + i
        return None


class IncrementalDocument:
    """An XML document arriving in pieces (one ``write()`` at a time).

    ``feed()`` returns True once the root element is closed; it raises
    :class:`XmlError` at once when the bytes can never become a well-formed
    document.  After an error the object stays failed: every later call
    raises the same error.  ``close()`` returns the root element.
    """

    def __init__(
        self,
        *,
        label: str | None = None,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        max_depth: int = MAX_DEPTH,
        max_elements: int = MAX_ELEMENTS,
    ) -> None:
        self._label = label
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._parser = etree.XMLPullParser(
            events=("start", "end"),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            collect_ids=False,
        )
        self._chunks: list[bytes] = []
        self._size = 0
        self._depth = 0
        self._elements = 0
        self._root: etree._Element | None = None
        self._root_tag: str | None = None
        self._complete = False
        self._closed = False
        self._error: XmlError | None = None
        self._scanner = _Prescan()
        self._declaration_checked = False

    @property
    def complete(self) -> bool:
        """True once the root element has been closed (and no error seen)."""
        return self._complete and self._error is None

    @property
    def data(self) -> bytes:
        """Every byte fed so far."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    @property
    def size(self) -> int:
        """Number of bytes fed so far."""
        return self._size

    def _fail(self, reason: str) -> XmlError:
        self._error = XmlError(_one_line(reason))
        return self._error

    def _where(self, reason: str) -> str:
        return f"{self._label}: {reason}" if self._label else reason

    def feed(self, data: bytes) -> bool:
        """Add *data*; return True when the document is complete."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise self._fail(self._where("document already closed"))
        data = bytes(data)
        if not data:
            return self._complete
        if self._size + len(data) > self._max_bytes:
            raise self._fail(self._where(f"document is larger than {self._max_bytes} bytes"))
        if b"\x00" in data:
            raise self._fail(self._where("document contains a NUL byte"))
        if not self._declaration_checked:
            self._check_declaration(self.data + data)
        refused = self._scanner.scan(data)
        if refused is not None:
            reason, offset = refused
            line = 1 + (self.data + data)[:offset].count(b"\n")
            prefix = f"{self._label}:{line}" if self._label else f"line {line}"
            raise self._fail(f"{prefix}: {reason}")
        self._chunks.append(data)
        self._size += len(data)
        try:
            self._parser.feed(data)
        except etree.XMLSyntaxError as exc:
            raise self._fail(_syntax_message(exc, self._label)) from None
        self._consume_events()
        return self._complete

    def _check_declaration(self, head: bytes) -> None:
        """Refuse an XML declaration naming an encoding that is not ASCII-based."""
        head = head[:512]
        if len(head) < 3 and _BOM.startswith(head):
            return  # undecided
        bare = head.removeprefix(_BOM)
        if len(bare) < 5 and b"<?xml".startswith(bare):
            return  # undecided
        if not bare.startswith(b"<?xml"):
            self._declaration_checked = True
            return
        decl = _XML_DECL.match(head)
        if decl is None:
            # not finished yet; past 512 bytes libxml2 refuses it anyway
            self._declaration_checked = len(head) >= 512
            return
        self._declaration_checked = True
        found = _ENCODING.search(decl.group(1))
        if found is None:
            return
        encoding = (found.group(1) or found.group(2) or b"").decode("ascii", "replace")
        if encoding.lower() not in _ALLOWED_ENCODINGS:
            raise self._fail(self._where(f"unsupported document encoding '{encoding}' (use UTF-8)"))

    def _consume_events(self) -> None:
        for event, element in self._parser.read_events():
            if event == "start":
                if self._root is None:
                    self._root = element
                    self._root_tag = etree.QName(element).localname
                    self._check_no_dtd(element)
                self._depth += 1
                self._elements += 1
                if self._depth > self._max_depth:
                    raise self._fail(
                        self._where(f"elements are nested deeper than {self._max_depth} levels")
                    )
                if self._elements > self._max_elements:
                    raise self._fail(
                        self._where(f"document has more than {self._max_elements} elements")
                    )
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._complete = True

    def _check_no_dtd(self, element: etree._Element) -> None:
        docinfo = element.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
            raise self._fail(self._where(_NO_DTD))

    def close(self) -> etree._Element:
        """Finish the document and return its root element."""
        if self._error is not None:
            raise self._error
        if self._closed:
            assert self._root is not None
            return self._root
        if self._root is None and not self.data.strip():
            prefix = f"{self._label}:1" if self._label else "line 1"
            raise self._fail(f"{prefix}: Document is empty")
        try:
            root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise self._fail(_syntax_message(exc, self._label)) from None
        self._consume_events()
        if not self._complete or root is None:
            tag = f"</{self._root_tag}>" if self._root_tag else "a root element"
            raise self._fail(self._where(f"document ends before {tag}"))
        self._check_no_dtd(root)
        self._closed = True
        self._root = root
        return root


def parse_document(data: bytes, *, label: str | None = None) -> etree._Element:
    """Parse a complete untrusted document and return its root element.

    *label* names the document in error messages, as libvirt does
    (``"(storage_pool_definition)"``).
    """
    doc = IncrementalDocument(label=label)
    doc.feed(data)
    return doc.close()
