import corpus
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagefs.xml.safe import XmlError
from storagefs.xml.secret import USAGE_TYPES, SecretDef, format_secret, parse_secret

SECRET_DIR = "tests/secretxml2xmlin"
# libvirt's secretxml2xmltest: the expected output is the input file itself
SECRET_INPUTS = corpus.names(SECRET_DIR)

UUID = "f52a81b2-424e-490c-823d-6bd4235bc572"


def secret_xml(body: str, attrs: str = "") -> bytes:
    return f"<secret{attrs}>{body}</secret>".encode()


def test_corpus_is_present():
    base = corpus.require()
    assert (base / SECRET_DIR).is_dir()
    assert len(SECRET_INPUTS) == 7


@pytest.mark.parametrize("name", SECRET_INPUTS)
def test_round_trip_matches_libvirt(name):
    data = corpus.read(f"{SECRET_DIR}/{name}")
    assert format_secret(parse_secret(data)) == data.decode()


@pytest.mark.parametrize("name", SECRET_INPUTS)
def test_formatted_secret_validates_against_libvirt_schema(name):
    secret = parse_secret(corpus.read(f"{SECRET_DIR}/{name}"))
    corpus.assert_valid("secret.rng", format_secret(secret))
    secret.uuid = None
    secret.description = None
    corpus.assert_valid("secret.rng", format_secret(secret))
    secret.usage_type = secret.usage_id = None
    corpus.assert_valid("secret.rng", format_secret(secret))


def test_parse_fields():
    secret = parse_secret(corpus.read(f"{SECRET_DIR}/usage-ceph-space.xml"))
    assert secret == SecretDef(
        uuid="f52a81b2-424e-490c-823d-6bd4235bc573",
        ephemeral=False,
        private=True,
        description="Ceph secret with space and dot",
        usage_type="ceph",
        usage_id="client.admin secret",
    )


@pytest.mark.parametrize(
    ("kind", "child"),
    [
        ("volume", "volume"),
        ("ceph", "name"),
        ("iscsi", "target"),
        ("tls", "name"),
        ("vtpm", "name"),
    ],
)
def test_each_usage_type(kind, child):
    usage_id = "/var/lib/x.img" if kind == "volume" else "id & <x>"
    data = secret_xml(f"<usage type='{kind}'><{child}>{escape_text(usage_id)}</{child}></usage>")
    secret = parse_secret(data)
    assert (secret.usage_type, secret.usage_id) == (kind, usage_id)
    out = format_secret(secret)
    assert f"    <{child}>{escape_text(usage_id)}</{child}>\n" in out
    assert parse_secret(out.encode()) == secret


def escape_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_minimal_secret_defaults():
    secret = parse_secret(b"<secret/>")
    assert secret == SecretDef(uuid=None)
    assert format_secret(secret) == "<secret ephemeral='no' private='no'>\n</secret>\n"
    secret.uuid = UUID
    assert format_secret(secret) == (
        f"<secret ephemeral='no' private='no'>\n  <uuid>{UUID}</uuid>\n</secret>\n"
    )


def test_uuid_is_canonicalized():
    secret = parse_secret(secret_xml("<uuid> F52A81B2424E490C823D6BD4235BC572 </uuid>"))
    assert secret.uuid == UUID
    assert format_secret(SecretDef(uuid=UUID.upper().replace("-", ""))).count(UUID) == 1


def test_libvirt_xpath_rules():
    # empty values count as absent, as virXPathString makes them
    secret = parse_secret(
        secret_xml("<uuid></uuid><description></description>", " ephemeral='' private=''")
    )
    assert secret == SecretDef(uuid=None)
    # usage type 'none' is accepted and not printed
    secret = parse_secret(secret_xml("<usage type='none'><volume>/x</volume></usage>"))
    assert (secret.usage_type, secret.usage_id) == (None, None)
    assert "usage" not in format_secret(secret)
    # the first <usage> carrying a type attribute gives the type
    secret = parse_secret(
        secret_xml("<usage/><usage type='tls'><name>n</name></usage><usage type='x'/>")
    )
    assert (secret.usage_type, secret.usage_id) == ("tls", "n")
    # the text of the first match, descendants included
    secret = parse_secret(
        secret_xml("<description>a<b>b</b>c</description><description>z</description>")
    )
    assert secret.description == "abc"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (secret_xml("<uuid>not-a-uuid</uuid>"), "malformed uuid element"),
        (secret_xml(f"<uuid>{UUID}0</uuid>"), "malformed uuid element"),
        (secret_xml("<uuid>   </uuid>"), "malformed uuid element"),
        (
            secret_xml("<usage type='bogus'><name>x</name></usage>"),
            "unknown secret usage type bogus",
        ),
        (secret_xml("<usage><name>x</name></usage>"), "unknown secret usage type"),
        (secret_xml("<usage type=''><name>x</name></usage>"), "unknown secret usage type"),
        (
            secret_xml("<usage type='volume'/>"),
            "volume usage specified, but volume path is missing",
        ),
        (
            secret_xml("<usage type='volume'><name>/x</name></usage>"),
            "volume usage specified, but volume path is missing",
        ),
        (
            secret_xml("<usage type='ceph'><volume>x</volume></usage>"),
            "Ceph usage specified, but name is missing",
        ),
        (
            secret_xml("<usage type='iscsi'><name>x</name></usage>"),
            "iSCSI usage specified, but target is missing",
        ),
        (
            secret_xml("<usage type='tls'><name></name></usage>"),
            "TLS usage specified, but name is missing",
        ),
        (secret_xml("<usage type='vtpm'/>"), "vTPM usage specified, but name is missing"),
        (secret_xml("", " ephemeral='maybe'"), "invalid value of 'ephemeral'"),
        (secret_xml("", " private='YES'"), "invalid value of 'private'"),
        (b"<pool type='dir'/>", "expecting root element of 'secret', not 'pool'"),
        (b"<secret>", "(definition_of_secret)"),
        (b"", r"\(definition_of_secret\):1: Document is empty"),
    ],
)
def test_errors_like_libvirt(data, message):
    with pytest.raises(XmlError, match=message):
        parse_secret(data)


@pytest.mark.parametrize(
    "data",
    [
        b'<!DOCTYPE secret [<!ENTITY x "boom">]><secret><description>&x;</description></secret>',
        b'<!DOCTYPE secret SYSTEM "file:///etc/passwd"><secret/>',
        b'<?xml version="1.0"?>\n<!DOCTYPE secret><secret/>',
    ],
)
def test_doctype_is_refused(data):
    with pytest.raises(XmlError, match="DTDs and entity declarations are not allowed"):
        parse_secret(data)


def test_undefined_entity_is_refused():
    with pytest.raises(XmlError, match="Entity 'x' not defined"):
        parse_secret(secret_xml("<description>&x;</description>"))


def test_format_rejects_what_libvirt_cannot_hold():
    with pytest.raises(ValueError, match="unknown secret usage type"):
        format_secret(SecretDef(uuid=UUID, usage_type="bogus", usage_id="x"))
    with pytest.raises(ValueError, match="needs a usage id"):
        format_secret(SecretDef(uuid=UUID, usage_type="ceph"))
    with pytest.raises(ValueError, match="malformed secret uuid"):
        format_secret(SecretDef(uuid="nope"))


def _mutations() -> st.SearchStrategy[bytes]:
    return corpus.mutated([f"{SECRET_DIR}/{n}" for n in SECRET_INPUTS])


@given(st.one_of(st.binary(max_size=300), _mutations()))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_only_raise_xml_error(data):
    try:
        secret = parse_secret(data)
    except XmlError:
        return
    text = format_secret(secret)
    assert parse_secret(text.encode()) == secret
    assert format_secret(parse_secret(text.encode())) == text


# XML 1.0 characters that survive a round trip (no CR: parsers normalize it)
_xml_text = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\r",
        min_codepoint=0x20,
        max_codepoint=0xFFFD,
    )
    | st.sampled_from("\t\n"),
    max_size=40,
)
_object_name = st.text(
    st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="/", max_codepoint=0xFFFD
    ),
    min_size=1,
    max_size=20,
)


@st.composite
def _secrets(draw) -> SecretDef:
    kind = draw(st.none() | st.sampled_from(USAGE_TYPES))
    usage_id = None
    if kind == "volume":
        usage_id = "/" + draw(_object_name)
    elif kind is not None:
        usage_id = draw(_object_name)
    return SecretDef(
        uuid=draw(st.none() | st.uuids().map(str)),
        ephemeral=draw(st.booleans()),
        private=draw(st.booleans()),
        description=draw(st.none() | _xml_text.filter(bool)),
        usage_type=kind,
        usage_id=usage_id,
    )


@given(_secrets())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_generated_secrets_round_trip_and_validate(secret):
    text = format_secret(secret)
    assert parse_secret(text.encode()) == secret
    corpus.assert_valid("secret.rng", text)
