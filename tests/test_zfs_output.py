"""Parsers of zfs/zpool output and the argv storagefs gives zfs (storagefs/backends/
zfs_output.py, zfs_tool.py, zfs_sources.py): captured output of zfs-fuse 0.7 and
hypothesis-made listings. No tool runs here."""

from __future__ import annotations

import errno

from hypothesis import given
from hypothesis import strategies as st

from storagefs.backends.zfs_output import (
    Dataset,
    ZpoolEntry,
    errno_for,
    format_get,
    parse_get,
    parse_pools,
    reason,
)
from storagefs.backends.zfs_sources import document_name, pool_document
from storagefs.backends.zfs_tool import create_argv, zvol_argv
from storagefs.backends.zfs_volumes import volumes_of
from storagefs.names import check_name
from storagefs.xml.pool import parse_pool

# captured from zfs-fuse 0.7 on this machine (tabs as the tools print them)
ZPOOL_STATUS = """\
  pool: capb
 state: ONLINE
 scrub: none requested
config:

\tNAME                STATE     READ WRITE CKSUM
\tcapb                ONLINE       0     0     0
\t  mirror-0          ONLINE       0     0     0
\t    /tmp/zfscap/v2  ONLINE       0     0     0
\t    /tmp/zfscap/v3  ONLINE       0     0     0

errors: No known data errors

  pool: capa
 state: ONLINE
 scrub: none requested
config:

\tNAME              STATE     READ WRITE CKSUM
\tcapa              ONLINE       0     0     0
\t  /tmp/zfscap/v1  ONLINE       0     0     0

errors: No known data errors
"""
ZPOOL_IMPORT = """\
  pool: capb
    id: 11626674546451810834
 state: ONLINE
action: The pool can be imported using its name or numeric identifier.
config:

\tcapb                ONLINE
\t  mirror-0          ONLINE
\t    /tmp/zfscap/v2  ONLINE
\t    /tmp/zfscap/v3  ONLINE
"""
ZFS_GET = """\
capa\ttype\tfilesystem
capa\tused\t532480
capa\tavailable\t94887936
capa\tmountpoint\t/capa
capa\tmounted\tyes
capa/d1\ttype\tfilesystem
capa/d1\tused\t114688
capa/d1\tavailable\t94887936
capa/d1\treferenced\t114688
capa/d1\trefquota\t0
capa/d1\tmountpoint\t/capa/d1
capa/d1\tmounted\tyes
capa/d1@s1\ttype\tsnapshot
capa/d1@s1\tused\t0
capa/d1@s1\tavailable\t-
capa/d1@s1\tcreation\t1764595200
capa/d1@s1\tguid\t123
"""


def test_zpool_status_and_import_give_pools_and_their_leaf_devices():
    pools = parse_pools(ZPOOL_STATUS)
    assert [(p.name, p.state, p.devices) for p in pools] == [
        ("capb", "ONLINE", ["/tmp/zfscap/v2", "/tmp/zfscap/v3"]),
        ("capa", "ONLINE", ["/tmp/zfscap/v1"]),
    ]
    (imp,) = parse_pools(ZPOOL_IMPORT)
    assert imp.id == "11626674546451810834" and imp.importable
    assert imp.devices == ["/tmp/zfscap/v2", "/tmp/zfscap/v3"]
    assert not ZpoolEntry("x", action="The pool cannot be imported due to damaged "
                                      "devices or data.").importable


def test_zfs_get_volumes_and_snapshots():
    found = parse_get(ZFS_GET)
    assert found["capa"].number("available") == 94887936
    (vol,) = volumes_of(found, "capa")
    assert (vol.name, vol.key, vol.type, vol.path) == ("d1", "capa/d1", "dir", "/capa/d1")
    assert vol.capacity == 114688 + 94887936  # no refquota: what it can hold
    assert vol.allocation == 114688
    assert [(s.name, s.id, s.date) for s in vol.snapshots] == \
        [("s1", "123", "2025-12-01T13:20:00Z")]


def test_zvols_at_any_depth_and_datasets_right_below_the_source():
    text = format_get([
        Dataset("t", {"type": "filesystem"}),
        Dataset("t/a", {"type": "filesystem"}),
        Dataset("t/a/deep", {"type": "filesystem"}),
        Dataset("t/a/zv", {"type": "volume", "volsize": "16777216", "used": "4096",
                           "volblocksize": "8192", "refreservation": "0"}),
        Dataset("t/zv", {"type": "volume", "volsize": "8192"}),  # a shallower 'zv' wins
    ])
    vols = {v.name: v for v in volumes_of(parse_get(text), "t")}
    assert set(vols) == {"a", "zv"}
    assert vols["zv"].key == "t/zv" and vols["zv"].path == "/dev/zvol/t/zv"
    assert vols["zv"].type == "block" and vols["zv"].capacity == 8192


def test_zvol_argv_is_libvirts():
    # storage_backend_zfs.c's three forms (volmode only where zfs get names it)
    assert zvol_argv("test/v", 10 << 20, None, True) == \
        ["zfs", "create", "-o", "volmode=dev", "-V", "10240K", "test/v"]
    assert zvol_argv("test/v", 10 << 20, 0, False) == \
        ["zfs", "create", "-s", "-V", "10240K", "test/v"]
    assert zvol_argv("test/v", 10 << 20, 1 << 20, False) == \
        ["zfs", "create", "-s", "-o", "refreservation=1024K", "-V", "10240K", "test/v"]
    assert create_argv("dir", "t/d", 1 << 20, None, True) == \
        ["zfs", "create", "-o", "refquota=1048576", "t/d"]


@given(st.integers(1, 1 << 50), st.one_of(st.none(), st.integers(0, 1 << 50)))
def test_zvol_sizes_round_up_to_kib(capacity, allocation):
    argv = zvol_argv("p/v", capacity, allocation, False)
    kib = int(argv[argv.index("-V") + 1].rstrip("K"))
    assert (kib - 1) * 1024 < capacity <= kib * 1024
    assert ("-s" in argv) == (allocation is not None and allocation != capacity)


def test_reasons_and_errnos():
    assert reason("internal error: Function not implemented\n") == "Function not implemented"
    why = reason("cannot rollback to 'p/d@s1': more recent snapshots exist\nuse '-r' to "
                 "force deletion of the following snapshots:\np/d@s2\n")
    assert "p/d@s2" in why and errno_for(why) == errno.EBUSY
    assert errno_for("cannot open 'p/x': dataset does not exist") == errno.ENOENT
    assert errno_for("cannot open 'p': no such pool") == errno.ENOENT
    assert reason("Defaulting to 4K blocksize (ashift=12) for '/v'\n") == ""
    # no zfs-fuse running: the daemon is the reason, not a missing pool
    why = reason("connect: No such file or directory\nPlease make sure that the zfs-fuse "
                 "daemon is running.\ninternal error: failed to initialize ZFS library\n")
    assert "zfs-fuse daemon is running" in why and errno_for(why) == errno.EIO


COMPONENT = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-",
                    min_size=1, max_size=20).filter(lambda s: s[0].isalpha())
VALUE = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                max_size=30)


@given(st.dictionaries(COMPONENT, st.dictionaries(COMPONENT, VALUE, min_size=1, max_size=4),
                       min_size=1, max_size=6))
def test_zfs_get_round_trip(datasets):
    made = [Dataset(n, p) for n, p in datasets.items()]
    got = parse_get(format_get(made))
    assert {n: d.props for n, d in got.items()} == datasets


@given(st.text(max_size=300))
def test_parsers_never_raise_on_any_text(text):
    parse_get(text)
    parse_pools(text)
    errno_for(reason(text, text))


def vdev_tree(draw_devices: list[list[str]], mirrored: list[bool]) -> list[str]:
    lines = []
    for i, (devs, mirror) in enumerate(zip(draw_devices, mirrored, strict=True)):
        if mirror and len(devs) > 1:
            lines.append(f"\t  mirror-{i}  ONLINE       0     0     0")
            lines += [f"\t    {d}  ONLINE       0     0     0" for d in devs]
        else:
            lines += [f"\t  {d}  ONLINE       0     0     0" for d in devs]
    return lines


DEVICE = st.builds(lambda s: f"/tmp/v/{s}", COMPONENT)


@given(COMPONENT, st.lists(st.lists(DEVICE, min_size=1, max_size=3, unique=True),
                           min_size=1, max_size=3), st.data())
def test_zpool_status_leaves_are_the_devices(name, groups, data):
    mirrored = [data.draw(st.booleans()) for _ in groups]
    text = "\n".join([f"  pool: {name}", " state: ONLINE", "config:", "",
                      "\tNAME   STATE     READ WRITE CKSUM",
                      f"\t{name}  ONLINE       0     0     0",
                      *vdev_tree(groups, mirrored), "", "errors: No known data errors", ""])
    (entry,) = parse_pools(text)
    assert entry.name == name
    assert entry.devices == [d for g in groups for d in g]


@given(st.lists(st.tuples(st.text(max_size=40), st.text("0123456789", max_size=20)),
                max_size=6))
def test_source_documents_have_valid_unique_names(entries):
    taken: set[str] = set()
    for zname, zid in entries:
        name = document_name(ZpoolEntry(zname, id=zid), taken)
        check_name(name, "pool name")
        assert name not in taken
        taken.add(name)
    doc = pool_document(ZpoolEntry("tank", devices=["/tmp/v/a"]), "tank")
    defn = parse_pool(doc.encode())
    assert (defn.type, defn.name, defn.source.name) == ("zfs", "tank", "tank")
