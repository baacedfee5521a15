import builtins

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storagefs.xml.safe import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_ELEMENTS,
    IncrementalDocument,
    XmlError,
    parse_document,
)

POOL = b"<pool type='dir'>\n  <name>x</name>\n  <target><path>/srv</path></target>\n</pool>\n"


def feed_bytewise(data: bytes) -> tuple[IncrementalDocument, int | None]:
    """Feed one byte at a time; return the document and the index completing it."""
    doc = IncrementalDocument()
    done_at = None
    for i in range(len(data)):
        if doc.feed(data[i : i + 1]) and done_at is None:
            done_at = i
    return doc, done_at


def test_parse_document_ok():
    root = parse_document(POOL)
    assert root.tag == "pool"
    assert root.findtext("name") == "x"


@pytest.mark.parametrize(
    "data",
    [
        b"<?xml version='1.0'?>\n<pool/>",
        b"<?xml version='1.0' encoding='UTF-8'?><pool/>",
        b"\xef\xbb\xbf<pool/>",
        b"<!-- before --><?pi x?>\n<pool/>\n<!-- after -->\n<?pi y?>\n\n",
        b"<pool>caf\xc3\xa9 &amp; &lt;&gt;&quot;&apos; &#65;&#x42;</pool>",
        b"<pool><![CDATA[&undefined; <!DOCTYPE-ish]]></pool>",
        b"<?xml version='1.0' encoding='ISO-8859-1'?><pool>\xe9</pool>",
    ],
)
def test_acceptable_documents(data):
    assert parse_document(data).tag == "pool"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # virsh 9.0's messages for the same inputs (errors.txt)
        (
            b"<pool type='dir'><name>bad</name>\n",
            "(storage_pool_definition):2: Premature end of data in tag pool line 1",
        ),
        (b"not xml at all\n", "(storage_pool_definition):1: Start tag expected, '<' not found"),
        (b"", "(storage_pool_definition):1: Document is empty"),
        (b"<pool><name></pool>", "Opening and ending tag mismatch: name line 1 and pool"),
        (b"<pool/><pool/>", "Extra content at the end of the document"),
        (b"<pool/>junk", "Extra content at the end of the document"),
        (b"<pool>\xff</pool>", "Invalid bytes in character encoding"),
        (b"<pool>&nosuch;</pool>", "(storage_pool_definition):1: Entity 'nosuch' not defined"),
        (b"<pool a='&nosuch;'/>", "Entity 'nosuch' not defined"),
        (b"<pool>\x00</pool>", "NUL byte"),
    ],
)
def test_malformed_documents(data, message):
    with pytest.raises(XmlError) as info:
        parse_document(data, label="(storage_pool_definition)")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<pool><name>&lol9;</name></pool>"""

HOSTILE = {
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": b'<!DOCTYPE pool [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<pool><name>&xxe;</name></pool>",
    "external-entity-attribute": b'<!DOCTYPE pool [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<pool type='&xxe;'/>",
    "parameter-entity": b'<!DOCTYPE pool [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><pool/>',
    "external-dtd": b'<!DOCTYPE pool SYSTEM "http://example.invalid/pool.dtd"><pool/>',
    "network-dtd-file": b'<!DOCTYPE pool SYSTEM "file:///etc/passwd"><pool/>',
    "plain-doctype": b"<!DOCTYPE pool><pool/>",
    "doctype-after-comment": b"<!-- hi --><!DOCTYPE pool><pool/>",
    "utf16-doctype": '<!DOCTYPE pool [<!ENTITY a "b">]><pool>&a;</pool>'.encode("utf-16"),
    "utf7-smuggled-doctype": b'<?xml version="1.0" encoding="UTF-7"?>'
    b"+ADw-!DOCTYPE pool+AD4-<pool/>",
    "utf7-after-bom": b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-7"?>'
    b"+ADw-!DOCTYPE pool+AD4-<pool/>",
    "undefined-entity": b"<pool><name>&xxe;</name></pool>",
    "long-undefined-entity": b"<pool><name>&" + b"x" * 5000 + b";</name></pool>",
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_documents_are_refused_without_reading_files(data, monkeypatch):
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    with pytest.raises(XmlError) as info:
        parse_document(data)
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks
    assert opened == []


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("step", [1, 7])
def test_hostile_documents_fail_while_feeding(data, step):
    doc = IncrementalDocument()
    with pytest.raises(XmlError):
        for i in range(0, len(data), step):
            doc.feed(data[i : i + step])
    assert not doc.complete


def test_xinclude_is_not_processed():
    root = parse_document(
        b"<pool xmlns:xi='http://www.w3.org/2001/XInclude'>"
        b"<xi:include href='file:///etc/passwd' parse='text'/></pool>"
    )
    assert "root:" not in "".join(root.itertext())
    assert root[0].tag == "{http://www.w3.org/2001/XInclude}include"


def test_size_limit():
    big = b"<pool>" + b"x" * MAX_DOCUMENT_BYTES + b"</pool>"
    with pytest.raises(XmlError, match="larger than 1048576 bytes"):
        parse_document(big)
    doc = IncrementalDocument()
    doc.feed(b"<pool>" + b" " * (MAX_DOCUMENT_BYTES - 10))
    with pytest.raises(XmlError, match="larger than"):
        doc.feed(b"x" * 11)


def test_depth_limit():
    ok = b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH
    assert parse_document(ok).tag == "a"
    deep = b"<a>" * (MAX_DEPTH + 1)
    doc = IncrementalDocument()
    with pytest.raises(XmlError, match="nested deeper than 64"):
        doc.feed(deep)  # fails before the document is even complete


def test_element_count_limit():
    data = b"<a>" + b"<b/>" * MAX_ELEMENTS + b"</a>"
    with pytest.raises(XmlError, match="more than 10000 elements"):
        parse_document(data)


def test_incremental_errors_are_immediate():
    doc = IncrementalDocument()
    with pytest.raises(XmlError, match="mismatch"):
        doc.feed(b"<pool><name></pool>")

    doc = IncrementalDocument()
    with pytest.raises(XmlError, match="Start tag expected"):
        doc.feed(b"hello <pool/>")

    doc = IncrementalDocument()
    with pytest.raises(XmlError, match="DTD"):
        doc.feed(b"<!DOCTYPE")

    doc = IncrementalDocument()
    assert doc.feed(b"<pool><name>x</na") is False
    assert not doc.complete
    with pytest.raises(XmlError):
        doc.close()


def test_incremental_mismatch_fails_on_the_offending_byte():
    data = b"<pool><name></pool>"
    doc = IncrementalDocument()
    for i in range(len(data) - 1):
        doc.feed(data[i : i + 1])
    with pytest.raises(XmlError):
        doc.feed(data[-1:])


def test_bytewise_feed_completes_exactly_at_root_end():
    doc, done_at = feed_bytewise(POOL)
    assert done_at == POOL.rindex(b">")
    assert doc.complete
    assert doc.data == POOL
    assert doc.close().findtext("name") == "x"


def test_whitespace_and_comments_after_completion():
    doc = IncrementalDocument()
    assert doc.feed(b"<pool/>") is True
    assert doc.feed(b"\n  \n") is True
    assert doc.feed(b"<!-- trailing --><?pi?>\n") is True
    assert doc.close().tag == "pool"
    assert doc.close().tag == "pool"  # idempotent


def test_garbage_after_completion():
    doc = IncrementalDocument()
    assert doc.feed(b"<pool/>\n")
    with pytest.raises(XmlError, match="Extra content"):
        doc.feed(b"x")
    assert not doc.complete
    with pytest.raises(XmlError, match="Extra content"):  # stays failed
        doc.feed(b" ")
    with pytest.raises(XmlError, match="Extra content"):
        doc.close()


def test_close_of_incomplete_document():
    doc = IncrementalDocument(label="(storage_pool_definition)")
    doc.feed(b"<pool type='dir'><name>bad</name>\n")
    with pytest.raises(XmlError, match=r"^\(storage_pool_definition\):2: Premature end"):
        doc.close()


def test_feed_after_close_is_refused():
    doc = IncrementalDocument()
    doc.feed(b"<pool/>")
    doc.close()
    with pytest.raises(XmlError, match="closed"):
        doc.feed(b" ")


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_xml_error(data):
    try:
        parse_document(data)
    except XmlError:
        pass


_SPLITS = st.lists(st.integers(min_value=0, max_value=len(POOL)), max_size=8)


@given(_SPLITS)
def test_any_split_of_a_valid_document_completes(cuts):
    points = sorted(set(cuts) | {0, len(POOL)})
    doc = IncrementalDocument()
    results = [doc.feed(POOL[a:b]) for a, b in zip(points, points[1:], strict=False)]
    assert results[-1] is True
    assert doc.close().findtext("target/path") == "/srv"


@given(st.binary(max_size=200), _SPLITS)
@settings(max_examples=200)
def test_incremental_arbitrary_bytes_only_raise_xml_error(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    doc = IncrementalDocument()
    try:
        for a, b in zip(points, points[1:], strict=False):
            doc.feed(data[a:b])
        doc.close()
    except XmlError:
        pass
