"""Issue 12, iscsi-direct: the LUNs of an iSCSI target reached with libiscsi, on a real
mount, against a real tgtd on 127.0.0.1 (tests/server_tgt.py: one per test session,
its own portal and control port, stopped by PID).

Each test makes targets of its own (names from the test) on the shared tgtd."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import trio
from mount_helpers import (
    MiB,
    assert_one_error_line,
    assert_valid,
    command,
    conformance,
    read,
    run,
    write,
    write_errno,
    xml_value,
)
from server_tgt import INITIATOR, tgt_server  # noqa: F401

from storagefs.backends.iscsi_direct import IscsiDirectBackend
from storagefs.xml.pool import parse_pool

LIMIT = 6  # the storage time limit of mounts that meet a hung target (seconds)
SECRET_UUID = "5f2c3b1a-8d4e-4f6a-9b7c-0d1e2f3a4b5c"
PASSWORD = "tgt-chap-secret-0815"


@pytest.fixture
def tgt(tgt_server):  # noqa: F811
    tgt_server.ensure()
    yield tgt_server
    tgt_server.ensure()


def direct_xml(name: str, tgt, iqn: str, auth: str = "", initiator: str = INITIATOR) -> str:
    host, port = tgt.portal.split(":")
    return (f"<pool type='iscsi-direct'>\n  <name>{name}</name>\n  <source>\n"
            f"    <host name='{host}' port='{port}'/>\n    <device path='{iqn}'/>\n"
            f"    <initiator>\n      <iqn name='{initiator}'/>\n    </initiator>\n"
            f"{auth}  </source>\n</pool>\n")


def chap_auth(user: str, usage: str) -> str:
    return (f"    <auth type='chap' username='{user}'>\n      <secret usage='{usage}'/>\n"
            f"    </auth>\n")


def define(m, name: str, xml: str, start: bool = True):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", xml)
    if start:
        command(pdir / "control", "start")
    return pdir


def state(pdir) -> str:
    return read(pdir / "state").strip()


def chap_secret(m, usage: str, value: str = PASSWORD, uuid: str = SECRET_UUID) -> None:
    s = m.mnt / "secrets" / uuid
    os.mkdir(s)
    write(s / "config.xml", f"<secret ephemeral='no' private='yes'>\n  <uuid>{uuid}</uuid>\n"
                            f"  <usage type='iscsi'>\n    <target>{usage}</target>\n"
                            f"  </usage>\n</secret>\n")
    write(s / "value", value)


def wait_for(fn, seconds: float, step: float = 0.1):
    """fn() until it is true, at most ``seconds``; returns the last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def answers_within(fn, seconds: float):
    """(answered, result) of fn() in a helper thread given ``seconds``."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return bool(box), (box[0] if box else None)


# ---------------------------------------------------------------- listing


def test_luns_are_volumes_named_and_sized_as_libvirt_does_but_exact(mounted, tgt):
    tid, iqn = tgt.target("basic", [64 * MiB, 10 * MiB + 4096])
    p = define(mounted, "ld", direct_xml("ld", tgt, iqn))
    assert state(p) == "running"
    vols = p / "volumes"
    # tgtd's LUN 0 is a storage array controller: it holds no blocks, so it is no volume
    assert sorted(os.listdir(vols)) == ["unit:0:0:1", "unit:0:0:2"]
    v1 = vols / "unit:0:0:1"
    # READ CAPACITY(16) says last LBA 131071 of 512-byte blocks: 131072 blocks
    assert read(v1 / "capacity").strip() == str(64 * MiB)
    assert read(vols / "unit:0:0:2" / "capacity").strip() == str(10 * MiB + 4096)
    key = f"ip-{tgt.portal}-iscsi-{iqn}-lun-1"
    status = read(v1 / "status.xml")
    assert_valid(status, "storagevol")
    assert status == (f"<volume type='network'>\n  <name>unit:0:0:1</name>\n"
                      f"  <key>{key}</key>\n"
                      f"  <capacity unit='bytes'>{64 * MiB}</capacity>\n"
                      f"  <allocation unit='bytes'>{64 * MiB}</allocation>\n"
                      f"  <target>\n    <path>{key}</path>\n  </target>\n</volume>\n")
    assert read(v1 / "key").strip() == key
    assert read(v1 / "url").strip() == f"iscsi://{tgt.portal}/{iqn}/1"
    assert "path" not in os.listdir(v1)  # no local node: no path link
    assert os.readlink(mounted.mnt / "volumes" / "by-key" / key) == \
        "../../pools/ld/volumes/unit:0:0:1"
    pool_status = read(p / "status.xml")
    assert_valid(pool_status, "storagepool")
    total = 64 * MiB + 10 * MiB + 4096
    assert xml_value(pool_status, "/pool/capacity") == str(total)
    assert xml_value(pool_status, "/pool/allocation") == str(total)
    assert xml_value(pool_status, "/pool/available") == "0"
    assert read(p / "capacity").strip() == str(total)
    assert read(p / "control").split() == ["stop", "refresh"]


def test_luns_added_or_removed_on_the_target_show_at_the_next_ls(mounted, tgt):
    tid, iqn = tgt.target("poll", [8 * MiB])
    p = define(mounted, "lp", direct_xml("lp", tgt, iqn))
    vols = p / "volumes"
    assert os.listdir(vols) == ["unit:0:0:1"]  # someone reads the pool: it is polled
    tgt.add_lun(tid, 2, 16 * MiB)
    started = time.monotonic()
    assert wait_for(lambda: "unit:0:0:2" in os.listdir(vols), 3.0)
    assert time.monotonic() - started <= 2.5  # the poll interval is 2 s
    assert read(vols / "unit:0:0:2" / "capacity").strip() == str(16 * MiB)
    tgt.remove_lun(tid, 1)
    started = time.monotonic()
    assert wait_for(lambda: "unit:0:0:1" not in os.listdir(vols), 3.0)
    assert time.monotonic() - started <= 2.5
    assert read(p / "capacity").strip() == str(16 * MiB)


def test_luns_are_made_and_removed_on_the_target_not_here(mounted, tgt):
    tid, iqn = tgt.target("fixed", [4 * MiB])
    p = define(mounted, "lf", direct_xml("lf", tgt, iqn))
    with pytest.raises(OSError) as exc:
        os.mkdir(p / "volumes" / "unit:0:0:9")
    assert exc.value.errno == errno.ENOTSUP
    assert "creating volumes is not supported" in assert_one_error_line(p)
    with pytest.raises(OSError) as exc:
        os.rmdir(p / "volumes" / "unit:0:0:1")
    assert exc.value.errno == errno.ENOTSUP
    code, _ = write_errno(p / "volumes" / "unit:0:0:1" / "control", "resize 8M\n")
    assert code == errno.ENOTSUP
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]
    assert tgt.lun_file(tid, 1).stat().st_size == 4 * MiB


def test_wipe_zeroes_every_block_of_the_lun(mounted, tgt):
    size = 3 * MiB + 512
    tid, iqn = tgt.target("wipe", [size])
    backing = tgt.lun_file(tid, 1)
    with open(backing, "r+b") as f:
        f.write(b"\xa5" * size)
    p = define(mounted, "lw", direct_xml("lw", tgt, iqn))
    vol = p / "volumes" / "unit:0:0:1"
    assert "wipe" in read(vol / "control")
    command(vol / "control", "wipe")
    assert backing.read_bytes() == bytes(size)
    assert read(vol / "progress") == ""
    command(vol / "control", "wipe random")
    data = backing.read_bytes()
    assert len(data) == size and data.count(0) < size // 64
    code, _ = write_errno(vol / "control", "wipe dod\n")
    assert code == errno.ENOTSUP
    assert "zero, random" in assert_one_error_line(vol)


# ---------------------------------------------------------------- CHAP


def test_chap_password_comes_from_secrets_and_wrong_ones_are_eacces(mounted, tgt):
    tid, iqn = tgt.target("chap", [4 * MiB])
    tgt.account("alice", PASSWORD)
    tgt.require_chap(tid, "alice")
    xml = direct_xml("lc", tgt, iqn, chap_auth("alice", iqn))
    p = define(mounted, "lc", xml, start=False)
    code, _ = write_errno(p / "control", "start\n")  # no secret yet
    assert code == errno.ENOENT
    assert "no secret with usage iscsi" in assert_one_error_line(p)
    chap_secret(mounted, iqn, "not-the-password")
    code, _ = write_errno(p / "control", "start\n")
    assert code == errno.EACCES
    line = assert_one_error_line(p)
    assert "Authentication failure" in line  # the target's reason
    assert state(p) == "inactive"
    write(mounted.mnt / "secrets" / SECRET_UUID / "value", PASSWORD)
    command(p / "control", "start")
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]
    # the password is in no log line and no process's command line or environment
    assert PASSWORD not in mounted.log()
    assert not _processes_showing(PASSWORD.encode())


def _processes_showing(secret: bytes) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if secret in f.read():
                        found.append(f"{pid}/{what}")
            except OSError:
                pass
    # tgtadm took it on its command line when the test made the account: not ours
    return [f for f in found if "tgtadm" not in _comm(f.split("/")[0])]


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------- discovery


def test_find_sources_gives_one_pool_document_per_target(mounted, tgt):
    _, iqn = tgt.target("found", [2 * MiB])
    docs = trio.run(IscsiDirectBackend.find_sources, tgt.portal)
    by_target = {parse_pool(d.encode()).source.devices[0].path: d for d in docs}
    assert iqn in by_target
    doc = by_target[iqn]
    defn = parse_pool(doc.encode())
    assert defn.type == "iscsi-direct"
    assert defn.name == iqn  # the IQN is a valid pool name as it is
    assert defn.source.hosts[0].name == "127.0.0.1"
    assert defn.source.hosts[0].port == tgt.port
    assert defn.source.initiator_iqn  # the host's initiator name
    assert_valid(doc, "storagepool")
    # ready to be written as a pool's config.xml
    p = define(mounted, "found", doc.replace(f"<name>{iqn}</name>", "<name>found</name>"))
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]


def test_a_portal_query_in_sources_offers_its_targets_as_pools_to_cp(mounted, tgt):
    """What a user does: ask sources/ about a portal, cp a document, the pool runs."""
    _, iqn = tgt.target("asked", [2 * MiB])
    kind = mounted.mnt / "sources" / "iscsi-direct"
    write(kind / "query", tgt.portal + "\n")
    answer = kind / tgt.portal
    assert f"{iqn}.xml" in os.listdir(answer)
    doc = read(answer / f"{iqn}.xml")
    assert_valid(doc, "storagepool")
    os.mkdir(mounted.pool(iqn))
    run(["cp", str(answer / f"{iqn}.xml"), str(mounted.pool(iqn) / "config.xml")])
    command(mounted.pool(iqn) / "state", "running")
    assert os.listdir(mounted.pool(iqn) / "volumes") == ["unit:0:0:1"]
    # a portal that is no portal: EINVAL, one line in sources/iscsi-direct/error
    code, _ = write_errno(kind / "query", "a b\n")
    assert code == errno.EINVAL
    assert read(kind / "error").count("\n") == 1


def test_find_sources_refuses_what_is_no_portal(tgt):
    for query in ("", "host:port", "h:0", "a b", "[::1"):
        with pytest.raises(Exception) as exc:
            trio.run(IscsiDirectBackend.find_sources, query)
        assert getattr(exc.value, "errno", None) == errno.EINVAL, query


# ---------------------------------------------------------------- definitions


def test_two_pools_on_one_target_conflict(mounted, tgt):
    _, iqn = tgt.target("twice", [2 * MiB])
    define(mounted, "a1", direct_xml("a1", tgt, iqn), start=False)
    os.mkdir(mounted.pool("a2"))
    code, _ = write_errno(mounted.pool("a2") / "config.xml", direct_xml("a2", tgt, iqn))
    assert code == errno.EEXIST
    assert "a1" in assert_one_error_line(mounted.pool("a2"))
    # another initiator is another session: allowed, as libvirt allows it
    write(mounted.pool("a2") / "config.xml",
          direct_xml("a2", tgt, iqn, initiator=INITIATOR + "-2"))


@pytest.mark.parametrize("bad,reason", [
    ("<device path='iqn.x:a'/><device path='iqn.x:b'/>", "missing source device"),
    ("", "missing source device"),
])
def test_definitions_that_can_never_start_are_refused(mounted, tgt, bad, reason):
    xml = (f"<pool type='iscsi-direct'><name>bad</name><source>"
           f"<host name='127.0.0.1'/>{bad}<initiator><iqn name='{INITIATOR}'/></initiator>"
           f"</source></pool>")
    os.mkdir(mounted.pool("bad"))
    code, _ = write_errno(mounted.pool("bad") / "config.xml", xml)
    assert code == errno.EINVAL
    assert reason in assert_one_error_line(mounted.pool("bad"))


# ---------------------------------------------------------------- the server goes away


@pytest.mark.log_allows("storage became inaccessible", "figures not refreshed")
def test_target_that_goes_away_makes_the_pool_inaccessible_until_it_returns(mount_factory,
                                                                             tgt):
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))
    _, iqn = tgt.target("gone", [4 * MiB])
    p = define(m, "lg", direct_xml("lg", tgt, iqn))
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]
    tgt.kill()
    # the next poll finds the portal refusing connections
    assert wait_for(lambda: state(p) == "inaccessible", 5.0), read(p / "error")
    assert "Connection refused" in read(p / "error")
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]  # the last known LUNs stay listed
    answered, _ = answers_within(lambda: os.listdir(m.pool() / "volumes"), 0.1)
    assert answered
    code, _ = write_errno(p / "control", "refresh\n")
    assert code == errno.ECONNREFUSED
    tgt.start()
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert os.listdir(p / "volumes") == ["unit:0:0:1"]


@pytest.mark.log_allows("storage became inaccessible", "figures not refreshed", "returned after")
def test_target_that_stops_answering_holds_up_only_its_pool(mount_factory, tgt):
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))
    _, iqn = tgt.target("hung", [4 * MiB])
    p = define(m, "lh", direct_xml("lh", tgt, iqn))
    before = read(p / "volumes" / "unit:0:0:1" / "status.xml")
    os.mkdir(m.vol("other"))
    tgt.pause()
    try:
        checks = {
            "ls pools/": lambda: os.listdir(m.pools),
            "cat default/status.xml": lambda: read(m.pool() / "status.xml"),
            "mkdir in default": lambda: os.mkdir(m.vol("made-while-hung")),
            "cat lh/volumes/unit:0:0:1/status.xml":
                lambda: read(p / "volumes" / "unit:0:0:1" / "status.xml"),
            "ls lh/volumes": lambda: os.listdir(p / "volumes"),
        }
        for name, fn in checks.items():
            answered, _ = answers_within(fn, 0.1 if "default" in name or "pools" in name
                                         else 1.0)
            assert answered, f"{name} did not answer while the target hangs"
        # a refresh waits at most the time limit, and says why
        started = time.monotonic()
        answered, result = answers_within(lambda: write_errno(p / "control", "refresh\n"),
                                          LIMIT + 5)
        assert answered and time.monotonic() - started < LIMIT + 2
        assert result[0] in (errno.ETIMEDOUT, errno.EIO, errno.EBUSY), result
        assert wait_for(lambda: state(p) == "inaccessible", LIMIT + 2)
        assert "timed out" in read(p / "error") or "not responding" in read(p / "error")
        assert os.listdir(p / "volumes") == ["unit:0:0:1"]  # the last known LUNs stay
        answered, _ = answers_within(lambda: read(m.pool() / "status.xml"), 0.1)
        assert answered
    finally:
        tgt.resume()
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert read(p / "volumes" / "unit:0:0:1" / "status.xml") == before



@pytest.mark.log_allows("storage became inaccessible", "figures not refreshed", "returned after",
                        "refused control")
def test_a_wipe_cut_off_by_a_hung_target_says_the_lun_is_partly_wiped(mount_factory, tgt):
    """A wipe that the target stops answering in the middle of fails at the time limit;
    its error line says truthfully that the LUN may be partly wiped (a wipe has no
    undo), and the pool turns inaccessible with its LUNs still listed."""
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))
    _, iqn = tgt.target("cut", [512 * MiB])
    p = define(m, "lc", direct_xml("lc", tgt, iqn))
    vol = p / "volumes" / "unit:0:0:1"
    result: list = []
    writer = threading.Thread(
        target=lambda: result.append(write_errno(vol / "control", "wipe random\n")))
    writer.start()
    assert wait_for(lambda: read(vol / "progress").strip() not in ("", "wipe 0%"), 10)
    tgt.pause()
    try:
        writer.join(LIMIT + 15)
        assert result and result[0][0] in (errno.ETIMEDOUT, errno.EIO), result
        line = read(vol / "error")
        assert "partly wiped" in line, line
        assert wait_for(lambda: state(p) == "inaccessible", 2), (result, line)
        assert os.listdir(p / "volumes") == ["unit:0:0:1"]
    finally:
        tgt.resume()
    command(p / "control", "refresh")
    assert state(p) == "running"


# ---------------------------------------------------------------- libvirt's corpus

CORPUS_POOLS = ["pool-iscsi-direct.xml", "pool-iscsi-direct-auth.xml", "pool-iscsi.xml",
                "pool-iscsi-auth.xml", "pool-iscsi-multiiqn.xml",
                "pool-iscsi-vendor-product.xml"]


@pytest.mark.parametrize("name", CORPUS_POOLS)
def test_libvirts_iscsi_documents_are_accepted_kept_and_shown_as_libvirt_does(mounted, name):
    """libvirt's storagepoolxml2xml pairs for both types, through a real mount: the
    input is accepted as config.xml and reads back byte for byte, status.xml is libvirt's
    expected output (an inactive pool: sizes 0) and validates against storagepool.rng."""
    doc = conformance("libvirt", "tests", "storagepoolxml2xmlin", name).read_text()
    expected = conformance("libvirt", "tests", "storagepoolxml2xmlout", name).read_text()
    pool = parse_pool(doc.encode()).name
    p = mounted.pool(pool)
    os.mkdir(p)
    write(p / "config.xml", doc)
    assert read(p / "config.xml") == doc
    status = read(p / "status.xml")
    assert_valid(status, "storagepool")
    assert status == expected
    assert state(p) == "inactive"
