"""Issue 14 part 3: sources/ — storage that could become a pool, as ready pool
documents, on a real mount with loop devices and a volume group the tests make.

What other engineers' tests attach at the same time shows up in sources/ too: every
assertion here is about our own devices (by name), never about a whole listing.
Remote types (iscsi, netfs, gluster) are tested by their owners once their
``find_sources`` lands; the query plumbing is tested here with the local types, whose
query names a device (fs, disk) or a volume group (logical).
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from loopdev import LoopSet, host, skip_reason
from mount_helpers import (
    assert_one_error_line,
    assert_valid,
    command,
    ls_names,
    parse,
    read,
    read_bytes,
    write,
    write_errno,
    xml_value,
)

from storagefs.backends import localdisks
from storagefs.core.sources import parse_query, query_dirname
from storagefs.errors import InvalidArgument
from storagefs.names import check_name
from storagefs.xml.pool import parse_pool, rename_document

WAIT = 15.0


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("lsblk", "mkfs.ext4", "parted", "pvcreate", "vgcreate", "pvs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


@pytest.fixture
def vg():
    return f"sfs_{uuid.uuid4().hex[:10]}"


def wait_until(cond, timeout: float = WAIT, what: str = "") -> None:
    """Poll ``cond`` (each listing of a stale sources/TYPE wakes its refresh)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def shown(m, kind: str) -> set[str]:
    return ls_names(m.mnt / "sources" / kind)


# ---- the listing ---------------------------------------------------------------------
def test_an_empty_device_is_offered_as_a_disk_and_an_fs_pool(mounted, loops):
    dev = loops.make("64M")
    src = mounted.mnt / "sources"
    assert {"disk", "fs", "logical"} <= ls_names(src)
    assert "sources" in ls_names(mounted.mnt)
    wait_until(lambda: f"{dev.name}.xml" in shown(mounted, "fs")
               and f"{dev.name}.xml" in shown(mounted, "disk"), what="loop device offered")
    assert {"error", "query"} <= shown(mounted, "fs")

    fs_doc = read_bytes(src / "fs" / f"{dev.name}.xml")
    assert os.stat(src / "fs" / f"{dev.name}.xml").st_size == len(fs_doc)
    assert_valid(fs_doc, "storagepool")
    assert xml_value(fs_doc, "/pool/@type") == "fs"
    assert xml_value(fs_doc, "/pool/name") == dev.name
    assert xml_value(fs_doc, "/pool/source/device/@path") == dev.path
    assert xml_value(fs_doc, "/pool/source/format/@type") == "ext4"
    assert xml_value(fs_doc, "/pool/target/path") == f"/mnt/{dev.name}"
    assert not parse(fs_doc).xpath("/pool/uuid")

    disk_doc = read_bytes(src / "disk" / f"{dev.name}.xml")
    assert_valid(disk_doc, "storagepool")
    assert xml_value(disk_doc, "/pool/source/device/@path") == dev.path
    assert xml_value(disk_doc, "/pool/source/format/@type") == "gpt"
    assert f"{dev.name}.xml" not in shown(mounted, "logical")
    # generated, read-only
    assert write_errno(src / "fs" / f"{dev.name}.xml", "x")[0] == errno.EACCES


def test_a_device_with_a_filesystem_a_label_or_a_pv_is_not_offered(mounted, loops, vg):
    with_fs, labelled, pv = loops.make("64M"), loops.make("64M"), loops.make("64M")
    wait_until(lambda: {f"{d.name}.xml" for d in (with_fs, labelled, pv)}
               <= shown(mounted, "fs"), what="the three empty devices offered")
    host(["mkfs.ext4", "-q", with_fs.path])
    host(["parted", "-s", labelled.path, "mklabel", "gpt", "mkpart", "p1", "1MiB", "20MiB"])
    host(["pvcreate", "-q", pv.path])
    part = os.path.basename(labelled.part(1))

    def settled() -> bool:
        fs, disk = shown(mounted, "fs"), shown(mounted, "disk")
        return not ({f"{d.name}.xml" for d in (with_fs, labelled, pv)} & (fs | disk)) \
            and f"{part}.xml" in fs
    wait_until(settled, what="devices in use left out, the empty partition offered")
    # a partition can hold an fs pool, never a disk pool
    assert f"{part}.xml" not in shown(mounted, "disk")
    doc = read_bytes(mounted.mnt / "sources" / "fs" / f"{part}.xml")
    assert xml_value(doc, "/pool/source/device/@path") == labelled.part(1)


def test_cp_of_a_volume_group_document_defines_the_pool_as_is(mounted, loops, vg):
    dev = loops.make("64M")
    host(["pvcreate", "-q", dev.path])
    host(["vgcreate", "-q", vg, dev.path])
    logical = mounted.mnt / "sources" / "logical"
    wait_until(lambda: f"{vg}.xml" in shown(mounted, "logical"), what="VG offered")
    doc = read_bytes(logical / f"{vg}.xml")
    assert_valid(doc, "storagepool")
    assert xml_value(doc, "/pool/name") == vg
    assert xml_value(doc, "/pool/source/name") == vg
    assert xml_value(doc, "/pool/source/device/@path") == dev.path
    assert xml_value(doc, "/pool/target/path") == f"/dev/{vg}"
    # its PV is never offered for another pool
    assert f"{dev.name}.xml" not in shown(mounted, "fs") | shown(mounted, "disk")

    pool = mounted.pool(vg)
    os.mkdir(pool)  # a pending pool of that name does not rename the document
    assert f"{vg}.xml" in shown(mounted, "logical")
    host(["cp", logical / f"{vg}.xml", pool / "config.xml"])
    assert read_bytes(pool / "config.xml") == doc
    assert read(pool / "type").strip() == "logical"
    command(pool / "state", "running")
    assert read(pool / "state").strip() in ("running", "degraded")
    assert int(read(pool / "capacity")) > 0
    # a VG a pool uses is offered no more, at once (no refresh needed)
    assert f"{vg}.xml" not in shown(mounted, "logical")
    code, _ = write_errno(logical / "query", f"{vg}\n")
    assert code is None  # asked by name, the VG is found ...
    assert ls_names(logical / vg) == set()  # ... and left out: pool lp uses it

    command(pool / "state", "inactive")
    os.rmdir(pool)
    assert f"{vg}.xml" in shown(mounted, "logical")
    assert ls_names(logical / vg) == {f"{vg}.xml"}


def test_disk_document_defines_builds_and_its_partitions_are_never_offered(mounted, loops):
    dev = loops.make("64M")
    wait_until(lambda: f"{dev.name}.xml" in shown(mounted, "disk"), what="disk offered")
    pool = mounted.pool(dev.name)
    os.mkdir(pool)
    host(["cp", mounted.mnt / "sources" / "disk" / f"{dev.name}.xml", pool / "config.xml"])
    # the device is this pool's source now: offered for no other pool
    assert f"{dev.name}.xml" not in shown(mounted, "disk") | shown(mounted, "fs")
    command(pool / "control", "build")
    command(pool / "state", "running")
    os.mkdir(pool / "volumes" / f"{dev.name}p1")
    write(pool / "volumes" / f"{dev.name}p1" / "config.xml",
          f"<volume><name>{dev.name}p1</name><capacity unit='MiB'>8</capacity></volume>")
    assert os.path.exists(dev.part(1))
    # an empty partition of a pool's disk is the pool's volume, not a new pool
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert f"{dev.name}p1.xml" not in shown(mounted, "fs")
        time.sleep(0.3)
    code, _ = write_errno(mounted.mnt / "sources" / "fs" / "query", f"{dev.part(1)}\n")
    assert code is None
    assert ls_names(mounted.mnt / "sources" / "fs" / dev.part(1).replace("/", "!")) == set()


def test_fs_document_builds_mounts_and_deletes_as_is(mounted, loops):
    dev = loops.make("64M")
    wait_until(lambda: f"{dev.name}.xml" in shown(mounted, "fs"), what="fs offered")
    pool = mounted.pool(dev.name)
    target = f"/mnt/{dev.name}"
    assert not os.path.exists(target), f"{target} exists on this host already"
    os.mkdir(pool)
    try:
        host(["cp", mounted.mnt / "sources" / "fs" / f"{dev.name}.xml", pool / "config.xml"])
        command(pool / "control", "build")
        command(pool / "state", "running")
        assert host(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", target]).stdout.strip() \
            == dev.path
        os.mkdir(pool / "volumes" / "a.qcow2")
        assert os.path.exists(f"{target}/a.qcow2")
        os.rmdir(pool / "volumes" / "a.qcow2")
        command(pool / "state", "inactive")
        command(pool / "control", "delete")
        assert not os.path.exists(target)
    finally:
        host(["umount", target], check=False)
        if os.path.isdir(target):
            os.rmdir(target)


def test_a_name_a_pool_has_is_offered_as_name_type(mounted, loops, tmp_path):
    dev = loops.make("64M")
    pool = mounted.pool(dev.name)
    os.mkdir(pool)
    (tmp_path / "d").mkdir()
    write(pool / "config.xml", f"<pool type='dir'><name>{dev.name}</name>"
                               f"<target><path>{tmp_path / 'd'}</path></target></pool>")
    wait_until(lambda: f"{dev.name}-fs.xml" in shown(mounted, "fs"), what="renamed document")
    assert f"{dev.name}.xml" not in shown(mounted, "fs")
    doc = read_bytes(mounted.mnt / "sources" / "fs" / f"{dev.name}-fs.xml")
    assert xml_value(doc, "/pool/name") == f"{dev.name}-fs"
    assert xml_value(doc, "/pool/source/device/@path") == dev.path
    assert xml_value(doc, "/pool/target/path") == f"/mnt/{dev.name}"
    assert parse_pool(doc).name == f"{dev.name}-fs"


# ---- queries -------------------------------------------------------------------------
def test_a_query_naming_a_path_inside_the_mount_is_refused_and_holds_up_nothing(
        mounted, tmp_path):
    """Found by an outside tester: such a query made storagefs stat its own mount from
    its event loop, and the whole tree hung until SIGKILL."""
    link = tmp_path / "into-the-mount"
    link.symlink_to(mounted.mnt / "README")
    for kind, query in (("fs", mounted.mnt / "pools"), ("disk", mounted.mnt / "README"),
                        ("fs", f"{mounted.mnt}/pools/../README"), ("disk", link),
                        ("logical", mounted.mnt / "pools")):
        k = mounted.mnt / "sources" / kind
        code, _ = write_errno(k / "query", f"{query}\n")
        assert code == errno.EINVAL, (kind, query)
        assert "inside the storagefs mount" in assert_one_error_line(k)
        assert "default" in ls_names(mounted.mnt / "pools")  # the tree answers


def test_a_query_names_a_device_and_keeps_its_answer_in_a_directory(mounted, loops, tmp_path):
    dev, busy = loops.make("64M"), loops.make("64M")
    host(["mkfs.ext4", "-q", dev.path])
    host(["mkfs.ext4", "-q", busy.path])
    where = tmp_path / "m"
    where.mkdir()
    host(["mount", busy.path, where])
    fs = mounted.mnt / "sources" / "fs"

    command(fs / "query", dev.path)  # the write returns when the answer is there
    answer = fs / dev.path.replace("/", "!")
    assert ls_names(answer) == {f"{dev.name}.xml"}
    doc = read_bytes(answer / f"{dev.name}.xml")
    assert xml_value(doc, "/pool/source/format/@type") == "ext4"  # as it is: no build
    assert_valid(doc, "storagepool")
    assert read(fs / "query") == f"{dev.path}\n"

    # refusals: one error line, a fitting errno, nothing kept
    for query, code, words in ((busy.path, errno.EBUSY, f"mounted on {where}"),
                               ("/dev/sfs-none", errno.ENOENT, "not a block device")):
        got, call = write_errno(fs / "query", f"{query}\n")
        assert (got, call) == (code, "write"), query
        line = assert_one_error_line(fs)
        assert words in line and query in line, line
        assert query.replace("/", "!") not in shown(mounted, "fs")
    assert read(fs / "query") == f"{dev.path}\n"
    got, _ = write_errno(mounted.mnt / "sources" / "disk" / "query", f"{dev.path}\n")
    assert got == errno.EBUSY and "ext4" in assert_one_error_line(mounted.mnt / "sources" / "disk")
    for bad in (".hidden", "query", "a.xml", "x\x01y"):
        assert write_errno(fs / "query", f"{bad}\n") == (errno.EINVAL, "write"), bad
    assert os.listdir(answer)  # still there

    # asked again in the background: once mounted, the device is offered no more
    (tmp_path / "m2").mkdir()
    host(["mount", dev.path, tmp_path / "m2"])
    try:
        wait_until(lambda: ls_names(answer) == set(), what="answer emptied once mounted")
    finally:
        host(["umount", tmp_path / "m2"])
        host(["umount", where])
    assert write_errno(fs / "some", "x", os.O_CREAT | os.O_WRONLY) == (errno.EPERM, "open")
    assert os.path.isdir(answer)
    os.rmdir(answer)
    assert dev.path.replace("/", "!") not in shown(mounted, "fs")
    assert read(fs / "query") == ""
    with pytest.raises(OSError) as exc:
        os.mkdir(fs / "new")
    assert exc.value.errno == errno.EPERM


def test_a_logical_query_names_a_volume_group_or_one_of_its_pvs(mounted, loops, vg):
    a, b = loops.make("64M"), loops.make("64M")
    host(["pvcreate", "-q", a.path, b.path])
    host(["vgcreate", "-q", vg, a.path, b.path])
    logical = mounted.mnt / "sources" / "logical"
    command(logical / "query", b.path)
    doc = read_bytes(logical / b.path.replace("/", "!") / f"{vg}.xml")
    devices = parse(doc).xpath("/pool/source/device/@path")
    assert sorted(devices) == sorted([a.path, b.path])
    command(logical / "query", vg)
    assert read_bytes(logical / vg / f"{vg}.xml") == doc
    got, call = write_errno(logical / "query", "sfs_no_such_vg\n")
    assert (got, call) == (errno.ENOENT, "write")
    assert "sfs_no_such_vg" in assert_one_error_line(logical)


# ---- hot paths ---------------------------------------------------------------------------
def test_listing_sources_runs_no_host_tool(tmp_path, monkeypatch):
    """A listing only reads the cache: with every host tool call refused, sources/ still
    answers (and the core's background refresh is what runs the tools)."""
    from test_handlers import Fs

    from storagefs import hostcmd
    from storagefs.fuse.operations import Operations
    from storagefs.fuse.render import README
    from storagefs.mount import make_core

    async def main() -> None:
        core = await make_core(str(tmp_path / "state"))
        try:
            await core.sources.refresh()  # fill the cache, as the background does
            fs = Fs(Operations(core, README))
            calls: list[list[str]] = []

            async def refuse(argv, **kw):
                calls.append(list(argv))
                raise AssertionError(f"a read ran {argv}")

            monkeypatch.setattr(hostcmd, "run", refuse)
            for kind in ("disk", "fs", "logical"):
                names = await fs.listdir(f"sources/{kind}")
                assert {"error", "query"} <= set(names)
                for name in names:
                    if name.endswith(".xml"):
                        assert (await fs.read(f"sources/{kind}/{name}")).startswith(b"<pool")
            assert calls == []
        finally:
            core.state.close()

    trio.run(main)


def test_a_remote_query_shows_its_documents_or_times_out_holding_up_nothing(tmp_path,
                                                                       monkeypatch):
    """The plumbing a remote type (netfs, iscsi ...) gets when its backend learns
    find_sources, driven through the FUSE handlers: its documents appear under the
    query's directory; a host that never answers fails the write with ETIMEDOUT after
    the time limit, with one error line, while every other path answers at once. The
    stand-in backend answers from memory (the real remote queries are their owners'
    tests, against real servers)."""
    from test_handlers import Fs, errno_of

    from storagefs.backends.base import PoolBackend
    from storagefs.core.sources import SourceKind
    from storagefs.fuse.operations import Operations
    from storagefs.fuse.render import README
    from storagefs.mount import make_core

    class Remote(PoolBackend):
        @classmethod
        async def find_sources(cls, query=None):
            if query == "silent.example":
                await trio.sleep(3600)
            return [f"<pool type='netfs'><name>{query}-{share}</name><source>"
                    f"<host name='{query}'/><dir path='/{share}'/><format type='nfs'/>"
                    f"</source><target><path>/mnt/{share}</path></target></pool>"
                    for share in ("a", "b")]

    monkeypatch.setenv("STORAGEFS_TOOL_TIMEOUT", "1")

    async def main() -> None:
        core = await make_core(str(tmp_path / "state"))
        core.sources.kinds["netfs"] = SourceKind("netfs", Remote)
        try:
            fs = Fs(Operations(core, README))
            assert "netfs" in await fs.listdir("sources")
            await fs.write("sources/netfs/query", b"nas1.example\n")
            assert sorted(await fs.listdir("sources/netfs/nas1.example")) == [
                "nas1.example-a.xml", "nas1.example-b.xml"]
            doc = await fs.read("sources/netfs/nas1.example/nas1.example-b.xml")
            assert parse_pool(doc).source.hosts[0].name == "nas1.example"

            answers: list[float] = []
            result: list[int | None] = []

            async def ask() -> None:
                # a writer that is alive (the handlers cancel the write of one gone)
                result.append(await errno_of(fs.write("sources/netfs/query",
                                                      b"silent.example\n", os.getpid())))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(0.1)
                while not result:
                    t0 = time.monotonic()
                    await fs.listdir("pools")
                    await fs.read("pools/default/status.xml")
                    await fs.listdir("sources/netfs")
                    answers.append(time.monotonic() - t0)
                    await trio.sleep(0.05)
            assert result == [errno.ETIMEDOUT]
            assert answers and max(answers) < 0.1, answers
            line = (await fs.read("sources/netfs/error")).decode()
            assert line.count("\n") == 1 and "silent.example" in line \
                and "no answer within 1 s" in line, line
            assert "silent.example" not in await fs.listdir("sources/netfs")
            await fs.forget_all()
        finally:
            core.state.close()

    trio.run(main)


# ---- parsers (hypothesis) --------------------------------------------------------------------
_knames = st.from_regex(r"[a-z]{2,6}[0-9]{0,2}", fullmatch=True)


@st.composite
def lsblk_tree(draw, depth: int = 0):
    kname = draw(_knames)
    row = {"name": kname, "kname": kname, "path": f"/dev/{kname}",
           "type": draw(st.sampled_from(["disk", "loop", "part", "lvm", "rom", "crypt"])),
           "size": draw(st.integers(0, 1 << 44)), "ro": draw(st.booleans()),
           "mountpoints": draw(st.lists(st.one_of(st.none(), st.sampled_from(
               ["/", "/srv", "[SWAP]"])), max_size=2)),
           "pkname": None}
    if depth < 2:
        row["children"] = draw(st.lists(lsblk_tree(depth + 1), max_size=3))
    return row


@settings(max_examples=150, deadline=None)
@given(st.lists(lsblk_tree(), max_size=4))
def test_parse_lsblk_reads_every_device_of_the_tree(rows):
    devices = localdisks.parse_lsblk(json.dumps({"blockdevices": rows}))
    assert [d.kname for d in devices] == [r["kname"] for r in rows]

    def count(rs):
        return sum(1 + count(r.get("children", [])) for r in rs)

    def walk(devs):
        return sum(1 + walk(d.children) for d in devs)

    assert walk(devices) == count(rows)
    for dev, row in zip(devices, rows, strict=True):
        assert dev.size == row["size"] and dev.ro == row["ro"]
        assert dev.mountpoints == [p for p in row["mountpoints"] if p]
        assert all(c.parent == dev.kname for c in dev.children)
    assert len({d.kname for d in localdisks.flatten(devices)}) == \
        len(localdisks.flatten(devices))


@given(st.text(max_size=200))
def test_parse_lsblk_refuses_garbage_with_valueerror(text):
    try:
        localdisks.parse_lsblk(text)
    except ValueError:
        pass


def test_parse_lsblk_of_an_old_lsblk_and_of_pvs():
    old = '{"blockdevices": [{"name": "sdb", "kname": "sdb", "type": "disk", ' \
          '"size": "1024", "ro": "0", "mountpoint": null}]}'
    (dev,) = localdisks.parse_lsblk(old)
    assert (dev.path, dev.size, dev.ro, dev.mountpoints) == ("/dev/sdb", 1024, False, [])
    pvs = ('{"report": [{"pv": [{"pv_name": "/dev/sdb", "vg_name": "vg0"}, '
           '{"pv_name": "/dev/sdc", "vg_name": ""}]}]}')
    assert localdisks.parse_pvs(pvs) == {"/dev/sdb": "vg0", "/dev/sdc": ""}
    assert localdisks.volume_groups(localdisks.parse_pvs(pvs)) == {"vg0": ["/dev/sdb"]}


@given(st.binary(max_size=300))
def test_a_query_line_is_text_or_refused_and_its_directory_is_a_safe_name(line):
    try:
        text = parse_query(line)
    except InvalidArgument:
        return
    if text is None:
        return
    name = query_dirname(text)
    assert check_name(name) == name and "/" not in name
    assert len(name.encode()) <= 255


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,40}", fullmatch=True))
def test_rename_document_changes_the_pool_name_only(name):
    doc = localdisks.logical_document("vg0", ["/dev/sdb"]).encode()
    renamed = rename_document(doc, name)
    a, b = parse_pool(doc), parse_pool(renamed)
    assert b.name == name and b.source == a.source and b.target_path == a.target_path
