"""Issue 12, iscsi (the kernel initiator through open-iscsi): what can be tested on a
machine whose kernel has no iSCSI initiator. The command lines are libvirt's
(src/util/viriscsi.c, argument for argument); the parsers read iscsiadm's output as its
README, man page and libvirt's comments show it (and hypothesis-made lines); the node
record editor and the sysfs walk work on temporary trees. A login, a rescan and real
LUNs are untested end to end here."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from mount_helpers import assert_one_error_line, assert_valid, write, write_errno

from storagefs.backends import iscsiadm
from storagefs.backends.iscsi import IscsiBackend
from storagefs.errors import StorageError
from storagefs.xml.pool import parse_pool

PORTAL = "192.168.122.170:3260"
TARGET = "iqn.2004-04.com.example:demo0"

# ---------------------------------------------------------------- command lines


def test_command_lines_are_libvirts():
    assert iscsiadm.session_argv() == ["iscsiadm", "--mode", "session"]
    assert iscsiadm.rescan_argv("3") == ["iscsiadm", "--mode", "session", "-r", "3", "-R"]
    assert iscsiadm.discovery_argv(PORTAL) == [
        "iscsiadm", "--mode", "discovery", "--type", "sendtargets", "--portal",
        "192.168.122.170:3260,1", "--op", "nonpersistent"]
    assert iscsiadm.discovery_argv(PORTAL, "libvirt-iface-1", persist=True) == [
        "iscsiadm", "--mode", "discovery", "--type", "sendtargets", "--portal",
        "192.168.122.170:3260,1", "--interface", "libvirt-iface-1"]
    assert iscsiadm.node_new_argv(PORTAL, TARGET) == [
        "iscsiadm", "--mode", "node", "--portal", "192.168.122.170:3260,1", "--targetname",
        TARGET, "--op", "new"]
    assert iscsiadm.node_update_argv(PORTAL, TARGET, "node.session.auth.username", "u") == [
        "iscsiadm", "--mode", "node", "--portal", "192.168.122.170:3260,1", "--target",
        TARGET, "--op", "update", "--name", "node.session.auth.username", "--value", "u"]
    assert iscsiadm.connection_argv(PORTAL, TARGET, "--login", None) == [
        "iscsiadm", "--mode", "node", "--portal", "192.168.122.170:3260,1", "--targetname",
        TARGET, "--login"]
    assert iscsiadm.connection_argv(PORTAL, TARGET, "--logout", "i1")[-3:] == [
        "--interface", "i1", "--logout"]
    assert iscsiadm.iface_initiator_argv("i1", "iqn.x:init") == [
        "iscsiadm", "--mode", "iface", "--interface", "i1", "--op", "update", "--name",
        "iface.initiatorname", "--value", "iqn.x:init"]


@pytest.mark.parametrize("name", ["node.session.auth.password",
                                  "node.session.auth.password_in",
                                  "discovery.sendtargets.auth.password"])
def test_no_password_is_ever_put_on_a_command_line(name):
    with pytest.raises(StorageError) as exc:
        iscsiadm.node_update_argv(PORTAL, TARGET, name, "secret")
    assert exc.value.errno == errno.EINVAL


# ---------------------------------------------------------------- iscsiadm's output


def test_sessions_as_the_tool_and_its_documentation_print_them():
    text = ("tcp: [1] 192.168.122.170:3260,1 demo-tgt-b (non-flash)\n"
            "tcp: [2] 192.168.122.170:3260,1 demo-tgt-a (non-flash)\n"
            "tcp [3] 10.15.85.19:3260,3 iqn.1992-08.com.netapp:sn.33615311\n"
            "tcp: [4] [fe80::1]:3260,1 iqn.2026-11.test:v6\n")
    sessions = iscsiadm.parse_sessions(text)
    assert [(s.sid, s.portal, s.tpgt, s.target) for s in sessions] == [
        ("1", "192.168.122.170:3260", 1, "demo-tgt-b"),
        ("2", "192.168.122.170:3260", 1, "demo-tgt-a"),
        ("3", "10.15.85.19:3260", 3, "iqn.1992-08.com.netapp:sn.33615311"),
        ("4", "[fe80::1]:3260", 1, "iqn.2026-11.test:v6")]
    assert iscsiadm.session_of(text, "demo-tgt-a") == "2"
    assert iscsiadm.session_of("iscsiadm: No active sessions.\n", "demo-tgt-a") is None


def test_sendtargets_output_gives_the_targets():
    text = ("192.168.122.185:3260,1 iqn.2004-04.com:fedora14:iscsi.demo0.bf6d84\n"
            "192.168.122.185:3260,1 iqn.2004-04.com:fedora14:iscsi.demo1.bf6d84\n"
            "10.15.84.19:3260,2 iqn.1992-08.com.netapp:sn.33615311\n"
            "[fe80::1]:3260,1 iqn.2026-11.test:v6\n"
            "iscsiadm: cannot make connection to 10.0.0.9: No route to host\n")
    assert iscsiadm.parse_targets(text) == [
        ("192.168.122.185:3260", 1, "iqn.2004-04.com:fedora14:iscsi.demo0.bf6d84"),
        ("192.168.122.185:3260", 1, "iqn.2004-04.com:fedora14:iscsi.demo1.bf6d84"),
        ("10.15.84.19:3260", 2, "iqn.1992-08.com.netapp:sn.33615311"),
        ("[fe80::1]:3260", 1, "iqn.2026-11.test:v6")]


def test_ifaces_as_the_readme_shows_them():
    text = ("default tcp,<empty>,<empty>,<empty>,<empty>\n"
            "iser iser,<empty>,<empty>,<empty>,<empty>\n"
            "cxgb3i.00:07:43:05:97:07 cxgb3i,00:07:43:05:97:07,<empty>,<empty>,<empty>\n"
            "libvirt-iface-0badcafe tcp,<empty>,<empty>,<empty>,iqn.2026-11.test:init\n")
    assert iscsiadm.parse_ifaces(text) == {
        "default": "", "iser": "", "cxgb3i.00:07:43:05:97:07": "",
        "libvirt-iface-0badcafe": "iqn.2026-11.test:init"}
    assert iscsiadm.iface_for(text, "iqn.2026-11.test:init") == "libvirt-iface-0badcafe"
    assert iscsiadm.iface_for(text, "iqn.2026-11.test:other") is None


def test_the_reason_is_iscsiadms_last_word_not_systemds():
    # captured on this machine (no kernel initiator): discovery through libvirt 9.0
    stderr = ("System has not been booted with systemd as init system (PID 1). Can't "
              "operate.\nFailed to connect to bus: Host is down\n"
              "iscsiadm: can not connect to iSCSI daemon (111)!\n"
              "libkmod: ERROR ../libkmod/libkmod-module.c:895 kmod_module_insert_module: "
              "could not find module by name='iscsi_tcp'\n"
              "iscsiadm: iSCSI driver tcp is not loaded. Load the module then retry the "
              "command.\niscsiadm: Could not perform SendTargets discovery: iSCSI driver "
              "not found. Please make sure it is loaded, and retry the operation\n")
    assert iscsiadm.reason(stderr) == ("Could not perform SendTargets discovery: iSCSI "
                                       "driver not found. Please make sure it is loaded, "
                                       "and retry the operation")
    assert iscsiadm.tool_errno(12) == errno.ENOTSUP
    assert iscsiadm.tool_errno(24) == errno.EACCES
    assert iscsiadm.tool_errno(21) == errno.ENOENT
    assert iscsiadm.tool_errno(99) == errno.EIO


_word = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-:"), min_size=1,
                max_size=40).filter(lambda s: not s.startswith((":", "-")))
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_portal = st.tuples(_ipv4, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}")


@given(st.lists(st.tuples(st.integers(1, 10**6), _portal, st.integers(1, 999), _word,
                          st.sampled_from(["", " (non-flash)", " (flash)"])), max_size=8))
def test_session_lines_parse_back(sessions):
    text = "".join(f"tcp: [{sid}] {p},{tag} {t}{tail}\n" for sid, p, tag, t, tail in sessions)
    parsed = iscsiadm.parse_sessions(text)
    assert [(s.sid, s.portal, s.tpgt, s.target) for s in parsed] == [
        (str(sid), p, tag, t) for sid, p, tag, t, _ in sessions]


@given(st.lists(st.tuples(_portal, st.integers(1, 999), _word), max_size=8),
       st.lists(st.text(max_size=60).filter(lambda s: "," not in s), max_size=4))
def test_target_lines_parse_back_and_junk_is_ignored(targets, junk):
    text = "".join(f"{p},{tag} {t}\n" for p, tag, t in targets) + \
        "".join(f"iscsiadm: {j}\n" for j in junk)
    assert iscsiadm.parse_targets(text) == [(p, tag, t) for p, tag, t in targets]


@given(st.dictionaries(_word.filter(lambda s: "," not in s),
                       st.one_of(st.just("<empty>"), _word), max_size=6))
def test_iface_lines_parse_back(ifaces):
    text = "".join(f"{name} tcp,<empty>,<empty>,<empty>,{iqn}\n" for name, iqn in ifaces.items())
    assert iscsiadm.parse_ifaces(text) == {n: ("" if v == "<empty>" else v)
                                          for n, v in ifaces.items()}


# ---------------------------------------------------------------- node records

RECORD = """# BEGIN RECORD 2.1.8
node.name = iqn.2004-04.com.example:demo0
node.tpgt = 1
node.session.auth.authmethod = CHAP
node.session.auth.username = admin
node.conn[0].address = 192.168.122.170
node.conn[0].port = 3260
# END RECORD
"""

_value = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                               blacklist_characters="\x85\xa0",
                               blacklist_categories=("Cc",)), min_size=1, max_size=60)


@given(_value)
def test_a_password_set_in_a_record_reads_back_and_nothing_else_moves(password):
    new = iscsiadm.set_record_values(RECORD, {"node.session.auth.password": password})
    lines = new.rstrip("\n").split("\n")
    assert f"node.session.auth.password = {password}" in lines
    assert [ln for ln in lines if not ln.startswith("node.session.auth.password")] == \
        RECORD.splitlines()
    assert lines[-1] == "# END RECORD"
    again = iscsiadm.set_record_values(new, {"node.session.auth.password": password})
    assert again == new


@pytest.mark.parametrize("bad", ["two\nlines", " lead", "trail ", "tab\there", "nel\x85",
                                 ""])
def test_values_a_record_cannot_hold_are_refused(bad):
    if bad == "":
        assert "x = " in iscsiadm.set_record_values(RECORD, {"x": ""})
        return
    with pytest.raises(StorageError):
        iscsiadm.set_record_values(RECORD, {"node.session.auth.password": bad})


def test_records_are_found_in_both_layouts_and_written_root_only(tmp_path):
    nodes = tmp_path / "nodes"
    new = nodes / TARGET / "192.168.122.170,3260,1"
    new.mkdir(parents=True)
    (new / "default").write_text(RECORD)
    old = nodes / TARGET / "192.168.122.170,3260,2"
    old.write_text(RECORD)
    (nodes / TARGET / "192.168.122.17,3260,1").mkdir()  # another host: not ours
    found = iscsiadm.record_paths(TARGET, "192.168.122.170", 3260, str(nodes))
    assert found == [str(new / "default"), str(old)]
    os.chmod(new / "default", 0o644)
    iscsiadm.write_record(found[0], {"node.session.auth.password": "s3cret"})
    assert "node.session.auth.password = s3cret" in (new / "default").read_text()
    assert stat.S_IMODE(os.stat(new / "default").st_mode) == 0o600
    assert sorted(os.listdir(new)) == ["default"]  # no temp file left
    assert iscsiadm.record_paths("no-such", "h", 1, str(nodes)) == []
    with pytest.raises(StorageError):
        iscsiadm.record_paths("../etc", "h", 1, str(nodes))


# ---------------------------------------------------------------- sysfs


def _fake_sysfs(root, sid="7", host=5, units=()):
    dev = root / "class" / "iscsi_session" / f"session{sid}" / "device"
    (dev / f"target{host}:0:0").mkdir(parents=True)
    (dev / "power").mkdir()
    for (h, b, t, lun), kind, block in units:
        d = root / "bus" / "scsi" / "devices" / f"{h}:{b}:{t}:{lun}"
        d.mkdir(parents=True)
        (d / "type").write_text(f"{kind}\n")
        if block:
            (d / "block" / block).mkdir(parents=True)


def test_the_units_of_a_session_are_found_in_sysfs(tmp_path):
    _fake_sysfs(tmp_path, units=[((5, 0, 0, 1), 0, "sdb"), ((5, 0, 0, 0), 12, None),
                                 ((5, 0, 0, 2), 5, "sr1"), ((5, 0, 0, 3), 0, None),
                                 ((6, 0, 0, 1), 0, "sdc")])
    host = iscsiadm.session_host("7", str(tmp_path))
    assert host == 5
    units = iscsiadm.scsi_units(host, str(tmp_path))
    assert [(u.name, u.device_type, u.block) for u in units] == [
        ("unit:0:0:1", 0, "sdb"), ("unit:0:0:2", 5, "sr1"), ("unit:0:0:3", 0, None)]
    with pytest.raises(StorageError):
        iscsiadm.session_host("8", str(tmp_path))


def test_stable_path_is_the_link_that_names_the_node(tmp_path):
    node = tmp_path / "sdz"
    node.write_text("")
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    (by_path / "ip-10.0.0.1:3260-iscsi-iqn.x:t-lun-1").symlink_to(node)
    (by_path / "other").symlink_to(tmp_path / "elsewhere")
    assert iscsiadm.stable_path(str(by_path), str(node)) == \
        str(by_path / "ip-10.0.0.1:3260-iscsi-iqn.x:t-lun-1")
    assert iscsiadm.stable_path(str(by_path), str(tmp_path / "sdy")) == str(tmp_path / "sdy")


# ---------------------------------------------------------------- on a mount


def iscsi_xml(name="ki", host="127.0.0.1", target=TARGET):
    return (f"<pool type='iscsi'>\n  <name>{name}</name>\n  <source>\n"
            f"    <host name='{host}'/>\n    <device path='{target}'/>\n  </source>\n"
            f"  <target>\n    <path>/dev/disk/by-path</path>\n  </target>\n</pool>\n")


def test_an_iscsi_pool_is_defined_and_shown_as_libvirt_does(mounted):
    p = mounted.pool("ki")
    os.mkdir(p)
    write(p / "config.xml", iscsi_xml())
    status = (p / "status.xml").read_text()
    assert_valid(status, "storagepool")
    assert parse_pool(status.encode()).source.devices[0].path == TARGET
    assert (p / "state").read_text().strip() == "inactive"
    assert (p / "control").read_text().split() == ["start"]


def test_an_iscsi_pool_needs_exactly_one_host_and_one_target(mounted):
    p = mounted.pool("kb")
    os.mkdir(p)
    doc = iscsi_xml("kb").replace("<host name='127.0.0.1'/>",
                                  "<host name='a'/><host name='b'/>")
    code, _ = write_errno(p / "config.xml", doc)
    assert code == errno.EINVAL
    assert "Expected exactly 1 host" in assert_one_error_line(p)


def test_discovery_without_a_kernel_initiator_says_why(tgt_free_port):
    # the real iscsiadm, with libvirt's arguments: it needs the kernel's iscsi_tcp
    with pytest.raises(StorageError) as exc:
        trio.run(IscsiBackend.find_sources, f"127.0.0.1:{tgt_free_port}")
    assert "SendTargets discovery" in exc.value.reason
    assert exc.value.errno in (errno.ENOTSUP, errno.EIO, errno.ECONNREFUSED)


@pytest.fixture
def tgt_free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_documents_for_discovered_targets_are_pools_of_the_type():
    from storagefs.backends.iscsi_source import source_documents
    docs = source_documents("iscsi", "10.0.0.1", None, [TARGET, "iqn.x:a/b", TARGET],
                            None, "/dev/disk/by-path")
    assert len(docs) == 2
    pools = [parse_pool(d.encode()) for d in docs]
    assert [p.name for p in pools] == [TARGET, "iqn.x:a_b"]
    assert all(p.target_path == "/dev/disk/by-path" for p in pools)
    assert_valid(docs[0], "storagepool")
