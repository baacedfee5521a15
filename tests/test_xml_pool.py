import corpus
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from storagefs.xml import (
    STORAGEFS_NS,
    XmlError,
    format_pool,
    parse_pool,
)
from storagefs.xml.pooltypes import POOL_TYPE_INFO, POOL_TYPES

POOL_INPUTS = corpus.names("tests/storagepoolxml2xmlin")


def _pairs() -> list[str]:
    if not corpus.available():
        return [corpus.MISSING]
    out = corpus.libvirt_dir() / "tests" / "storagepoolxml2xmlout"
    return [name for name in POOL_INPUTS if (out / name).is_file()]


POOL_PAIRS = _pairs()


def test_corpus_is_present():
    base = corpus.require()
    assert (base / "tests" / "storagepoolxml2xmlin").is_dir()
    assert len(POOL_PAIRS) == 38


@pytest.mark.parametrize("name", POOL_PAIRS)
def test_round_trip_matches_libvirt(name):
    data = corpus.read(f"tests/storagepoolxml2xmlin/{name}")
    expected = corpus.read(f"tests/storagepoolxml2xmlout/{name}").decode()
    assert format_pool(parse_pool(data)) == expected


@pytest.mark.parametrize("name", POOL_PAIRS)
def test_expected_output_is_a_fixed_point(name):
    expected = corpus.read(f"tests/storagepoolxml2xmlout/{name}")
    assert format_pool(parse_pool(expected)) == expected.decode()


@pytest.mark.parametrize("name", POOL_INPUTS)
def test_formatted_pool_validates_against_libvirt_schema(name):
    data = corpus.read(f"tests/storagepoolxml2xmlin/{name}")
    pool = parse_pool(data)
    pool.default_volume_format = "raw" if POOL_TYPE_INFO[pool.type].volume_formats else None
    pool.default_volume_capacity = 1 << 30
    corpus.assert_valid("storagepool.rng", format_pool(pool, extensions=False))
    corpus.assert_valid(
        "storagepool.rng",
        format_pool(pool, capacity=10, allocation=4, available=6, extensions=False),
    )


@pytest.mark.parametrize("name", corpus.names("tests/storagepoolschemadata", "*-invalid.xml"))
def test_invalid_schema_cases_are_rejected(name):
    data = corpus.read(f"tests/storagepoolschemadata/{name}")
    rng = corpus.schema("storagepool.rng")
    assert not rng.validate(etree.fromstring(data))
    with pytest.raises(XmlError, match="missing storage pool target path"):
        parse_pool(data)


@pytest.mark.parametrize("name", ["pool-dir", "pool-fs", "pool-logical"])
@pytest.mark.parametrize("state", ["", "-inactive"])
def test_formats_like_virsh_pool_dumpxml(name, state):
    corpus.require()
    captured = (corpus.virsh_dir() / "storage" / f"{name}{state}.xml").read_bytes()
    root = etree.fromstring(captured)
    sizes = {k: int(root.findtext(k)) for k in ("capacity", "allocation", "available")}
    # virsh adds one newline after the document libvirt returns
    assert format_pool(parse_pool(captured), **sizes) + "\n" == captured.decode()


DIR_POOL = """<pool type='dir'>
  <name>{name}</name>
  <target><path>{path}</path></target>{extra}
</pool>"""


def _dir_pool(name="p", path="/srv/p", extra="") -> bytes:
    return DIR_POOL.format(name=name, path=path, extra=extra).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<pool type='nosuch'><name>x</name></pool>",
         "Invalid value for attribute 'type' in element 'pool': 'nosuch'."),
        (b"<pool><name>x</name></pool>", "Missing required attribute 'type' in element 'pool'"),
        (b"<pool type='dir'><target><path>/x</path></target></pool>",
         "missing pool source name element"),
        (b"<pool type='dir'><name></name><target><path>/x</path></target></pool>",
         "missing pool source name element"),
        (b"<pool type='dir'><name>x</name></pool>", "missing storage pool target path"),
        (b"<pool type='dir'><name>x</name><target><path/></target></pool>",
         "missing storage pool target path"),
        (_dir_pool(name="a/b"), "name a/b cannot contain '/'"),
        (_dir_pool(extra="<uuid>not-a-uuid</uuid>"), "malformed uuid element"),
        (_dir_pool(extra="<features><cow state='maybe'/></features>"),
         "Invalid value for attribute 'state' in element 'cow': 'maybe'."),
        (b"<pool type='logical'><name>v</name><features><cow state='yes'/></features></pool>",
         "cow feature may only be used for 'fs' and 'dir' pools"),
        (b"<pool type='fs'><name>f</name><target><path>/m</path></target></pool>",
         "missing storage pool source device name"),
        (b"<pool type='fs'><name>f</name><source><device path='/d'/><format type='zfs'/>"
         b"</source><target><path>/m</path></target></pool>",
         "unknown pool format type zfs"),
        (b"<pool type='fs'><name>f</name><source><device/></source></pool>",
         "missing storage pool source device path"),
        (b"<pool type='netfs'><name>n</name><source><dir path='/e'/></source>"
         b"<target><path>/m</path></target></pool>",
         "missing storage pool source host name"),
        (b"<pool type='netfs'><name>n</name><source><host name='h'/></source>"
         b"<target><path>/m</path></target></pool>",
         "missing storage pool source path"),
        (b"<pool type='netfs'><name>n</name><source><host name='h' port='x'/>"
         b"<dir path='/e'/></source><target><path>/m</path></target></pool>",
         "Invalid value for attribute 'port' in element 'host': 'x'. Expected integer value"),
        (b"<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/e'/>"
         b"<format type='cifs'/><protocol ver='3'/></source><target><path>/m</path></target>"
         b"</pool>",
         "storage pool protocol ver unsupported for pool type 'cifs'"),
        (b"<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/e'/>"
         b"<protocol ver='3,rw'/></source><target><path>/m</path></target></pool>",
         "storage pool protocol ver '3,rw' must not contain ','"),
        (b"<pool type='rbd'><name>c</name><source><host name='h'/></source></pool>",
         "element 'name' is mandatory for RBD pool"),
        (b"<pool type='iscsi-direct'><name>i</name><source><host name='h'/>"
         b"<device path='t'/></source></pool>",
         "missing initiator IQN"),
        (b"<pool type='iscsi'><name>i</name><source><host name='h'/><device path='t'/>"
         b"<auth username='u'><secret uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth>"
         b"</source><target><path>/dev</path></target></pool>",
         "storage pool missing auth type"),
        (b"<pool type='iscsi'><name>i</name><source><host name='h'/><device path='t'/>"
         b"<auth type='chap' username='u'/></source><target><path>/dev</path></target></pool>",
         "Missing <secret> element in auth"),
        (b"<pool type='iscsi'><name>i</name><source><host name='h'/><device path='t'/>"
         b"<auth type='chap' username='u'><secret/></auth></source>"
         b"<target><path>/dev</path></target></pool>",
         "missing secret uuid or usage attribute"),
        (b"<pool type='scsi'><name>s</name><target><path>/dev</path></target></pool>",
         "missing storage pool source adapter"),
        (b"<pool type='scsi'><name>s</name><source><adapter type='fc_host' wwnn='1'"
         b" wwpn='10000000c9831b4b'/></source><target><path>/dev</path></target></pool>",
         "Malformed wwn: 1"),
        (b"<pool type='scsi'><name>s</name><source><adapter wwnn='20000000c9831b4b'/>"
         b"</source><target><path>/dev</path></target></pool>",
         "requires use of the adapter 'type'"),
        (b"<pool type='scsi'><name>s</name><source><adapter type='pci'/></source></pool>",
         "Unknown pool adapter type 'pci'"),
        (_dir_pool(extra="<target><permissions><mode>0999</mode></permissions></target>"),
         "malformed octal mode"),
        (b"<pool type='dir'><name>x</name><target><path>/x</path><permissions>"
         b"<owner>root</owner></permissions></target></pool>",
         "malformed owner element"),
        (b"<pool type='rbd'><name>c</name><source><name>r</name><host name='h'/></source>"
         b"<refresh><volume allocation='sometimes'/></refresh></pool>",
         "unknown storage pool volume refresh allocation type sometimes"),
        (b"<volume><name>x</name></volume>", "expecting root element of 'pool', not 'volume'"),
        (b"<pool type='dir'><name>bad</name>\n",
         "(storage_pool_definition):2: Premature end of data in tag pool line 1"),
    ],
)  # fmt: skip
def test_errors_are_libvirts(data, message):
    with pytest.raises(XmlError) as info:
        parse_pool(data)
    assert message in str(info.value)


def test_defaults_and_normalisation():
    pool = parse_pool(
        b"<pool type='dir'><name>p</name><target><path>///var/////lib//x//</path>"
        b"<permissions><mode>0755</mode><owner>-1</owner><group>4294967295</group>"
        b"</permissions></target></pool>"
    )
    assert pool.uuid is None  # the caller assigns one
    assert pool.target_path == "/var/lib/x"
    perms = pool.target_permissions
    assert (perms.mode, perms.owner, perms.group) == (0o755, None, None)
    text = format_pool(pool)
    assert "<uuid>" not in text
    assert "<owner>" not in text and "<mode>0755</mode>" in text


def test_logical_and_zfs_targets_are_derived():
    vg = parse_pool(b"<pool type='logical'><name>vg0</name></pool>")
    assert (vg.source.name, vg.target_path, vg.source.format) == ("vg0", "/dev/vg0", "lvm2")
    zfs = parse_pool(b"<pool type='zfs'><source><name>tank</name></source><name>z</name></pool>")
    assert zfs.target_path == "/dev/zvol/tank"


def test_volume_defaults_extension():
    data = _dir_pool(
        extra=f"\n  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_NS}'"
        " format='qcow2' capacity='10G'/>"
    )
    pool = parse_pool(data)
    assert pool.default_volume_format == "qcow2"
    assert pool.default_volume_capacity == 10 * 1024**3
    text = format_pool(pool)
    assert (
        f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_NS}' format='qcow2'"
        " capacity='10737418240'/>\n</pool>\n"
    ) in text
    assert parse_pool(text.encode()) == pool
    plain = format_pool(pool, extensions=False)
    assert "storagefs" not in plain
    corpus.assert_valid("storagepool.rng", plain)


def test_volume_defaults_any_prefix_on_root():
    data = (
        f"<pool type='dir' xmlns:x='{STORAGEFS_NS}'><name>p</name>"
        "<target><path>/p</path></target><x:volume-defaults capacity='1M'/></pool>"
    ).encode()
    pool = parse_pool(data)
    assert (pool.default_volume_format, pool.default_volume_capacity) == (None, 1 << 20)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ("capacity='12Q'", "Malformed size 12Q: unknown suffix 'Q'"),
        ("capacity='-1'", "sizes must not be negative"),
        ("format='nosuch'", "unknown volume format type nosuch"),
        ("format='none'", "unknown volume format type none"),
    ],
)
def test_volume_defaults_errors(attrs, message):
    extra = f"<s:volume-defaults xmlns:s='{STORAGEFS_NS}' {attrs}/>"
    with pytest.raises(XmlError, match=message):
        parse_pool(_dir_pool(extra=extra))


def test_volume_defaults_refused_where_volumes_have_no_format():
    data = (
        f"<pool type='logical'><name>v</name><s:volume-defaults xmlns:s='{STORAGEFS_NS}'"
        " format='raw'/></pool>"
    ).encode()
    with pytest.raises(XmlError, match="has no volume formats"):
        parse_pool(data)


def test_every_pool_type_formats_and_validates():
    for kind in POOL_TYPES:
        device = "iqn.2013-06.com.example:t" if kind.startswith("iscsi") else "/dev/x"
        pool = parse_pool(
            f"<pool type='{kind}'><name>p</name><source><name>s</name><host name='h'/>"
            f"<device path='{device}'/><dir path='/d'/><adapter name='host0'/>"
            "<initiator><iqn name='iqn.x'/></initiator></source>"
            "<target><path>/t</path></target></pool>".encode()
        )
        corpus.assert_valid("storagepool.rng", format_pool(pool, extensions=False))


def _mutations() -> st.SearchStrategy[bytes]:
    return corpus.mutated([f"tests/storagepoolxml2xmlin/{n}" for n in POOL_INPUTS])


@given(st.one_of(st.binary(max_size=300), _mutations()))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_only_raise_xml_error(data):
    try:
        pool = parse_pool(data)
    except XmlError:
        return
    text = format_pool(pool)
    assert format_pool(parse_pool(text.encode())) == text
