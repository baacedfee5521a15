"""Issue 14 part 4: migration from libvirt, both ways, against a real private libvirtd
(tests/server_libvirt.py: libvirt 9.0 in its own mount namespace).

- import: pools defined with ``virsh pool-define-as`` (autostart, started or not) are
  imported by ``storagefs import-libvirt`` into a running mount; ``virsh pool-dumpxml``
  and ``status.xml`` then describe the same pool (name, uuid, type, source, target); a
  second run changes nothing; a taken name and an unsupported type are skipped and
  said why.
- export: ``virsh pool-define --validate`` of a ``status.xml`` works for every type
  storagefs has (dir, fs, logical, disk; iscsi-direct, iscsi, gluster, zfs, rbd, netfs
  in each format), ``<auth>`` secrets defined in both with the same uuid; running dir,
  iscsi-direct (CHAP, tgtd), gluster (glusterd) and rbd (cephx) pools also start in
  libvirt after the export and list the same volumes.
- import of the network types: defined with ``virsh pool-define`` (not started), their
  ``status.xml`` says what ``virsh pool-dumpxml`` says, hosts, auth and options included.

The libvirtd is shared by the session: every test undefines the pools it made there.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loopdev import LoopSet, host, skip_reason
from mount_helpers import (
    command,
    ls_names,
    parse,
    pool_xml,
    read,
    read_bytes,
    storagefs_cmd,
    write,
)
from server_ceph import POOL as CEPH_POOL
from server_ceph import ceph_cephx  # noqa: F401
from server_gluster import gluster_server, gluster_volume  # noqa: F401
from server_libvirt import libvirtd  # noqa: F401
from server_tgt import INITIATOR, tgt_server  # noqa: F401

from storagefs import importer
from storagefs.names import check_name
from storagefs.xml.pool import FS_NS, RBD_NS


@pytest.fixture
def lv(libvirtd):  # noqa: F811 - the session fixture, one test's pools removed after it
    yield libvirtd
    names = libvirtd.virsh("pool-list", "--all", "--name", check=False).stdout.split()
    for name in names:
        libvirtd.virsh("pool-destroy", name, check=False)
        libvirtd.virsh("pool-undefine", name, check=False)


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("pvcreate", "vgcreate", "vgs", "pvs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def tag() -> str:
    return uuid.uuid4().hex[:8]


def import_libvirt(m, lv, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*storagefs_cmd(), "import-libvirt", "--mount", str(m.mnt),
         "--run-dir", str(lv.run_dir), *extra, str(lv.config_dir)],
        capture_output=True, text=True, timeout=120)


def essentials(xml: bytes | str) -> dict:
    """What a pool document says about the pool (not its live sizes)."""
    root = parse(xml)
    src = root.find("source")
    return {
        "type": root.get("type"),
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "devices": sorted(d.get("path") for d in src.findall("device")) if src is not None
        else [],
        "source name": src.findtext("name") if src is not None else None,
        "source format": src.find("format").get("type")
        if src is not None and src.find("format") is not None else None,
        "target": root.findtext("target/path"),
    }


def vol_names(lv, pool: str) -> list[str]:
    """``virsh vol-list`` names (9.0 has no --name for it)."""
    return [line.split()[0] for line in lv.virsh("vol-list", pool).stdout.splitlines()
            if line.strip()]


def lines(res: subprocess.CompletedProcess) -> set[str]:
    return set(res.stdout.splitlines())


def snapshot_tree(m) -> dict[str, tuple]:
    """Every pool's definition, state and autostart, with config.xml's mtime."""
    out = {}
    for name in ls_names(m.mnt / "pools") - {"by-uuid", "by-path"}:
        p = m.pool(name)
        out[name] = (read_bytes(p / "config.xml"), os.stat(p / "config.xml").st_mtime_ns,
                     read(p / "state"), read(p / "autostart"), read(p / "uuid"))
    return out


# ---- import ---------------------------------------------------------------------------
def test_import_keeps_name_uuid_autostart_and_running(mounted, lv, tmp_path):
    t = tag()
    running, idle, default = f"run-{t}", f"idle-{t}", "default"
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    lv.virsh("pool-define-as", running, "dir", "--target", tmp_path / "a")
    lv.virsh("pool-autostart", running)
    lv.virsh("pool-start", running)
    lv.virsh("pool-define-as", idle, "dir", "--target", tmp_path / "b")
    # libvirt's own "default" is the usual clash: storagefs has a default pool too
    lv.virsh("pool-define-as", default, "dir", "--target", tmp_path / "c")
    scsi = f"scsi-{t}"
    lv.virsh("pool-define-as", scsi, "scsi", "--adapter-name", "host0",
             "--target", "/dev/disk/by-path")

    res = import_libvirt(mounted, lv)
    assert res.returncode == 2, res  # some were skipped
    out = res.stdout.splitlines()
    assert f"imported {running}: dir autostart, running" in out, res.stdout
    assert f"imported {idle}: dir" in out, res.stdout
    skipped = {line.split(":")[0]: line for line in out if line.startswith("skipped")}
    assert "the name is taken by pool 'default'" in skipped["skipped default"]
    assert "--rename default=NEWNAME" in skipped["skipped default"]
    assert "skipped " + scsi in skipped, res.stdout
    assert "scsi" in skipped["skipped " + scsi]
    assert scsi not in ls_names(mounted.pools)

    for name, state, autostart in ((running, "running", "yes"), (idle, "inactive", "no")):
        pool = mounted.pool(name)
        assert read(pool / "state").strip() == state
        assert read(pool / "autostart").strip() == autostart
        assert read(pool / "uuid").strip() == lv.virsh("pool-uuid", name).stdout.strip()
        assert os.readlink(mounted.pools / "by-uuid" / read(pool / "uuid").strip()) \
            == f"../{name}"
        assert essentials(read_bytes(pool / "status.xml")) == \
            essentials(lv.virsh("pool-dumpxml", name).stdout)
    # libvirt's default was left alone, and so was storagefs's
    assert essentials(read_bytes(mounted.pool() / "status.xml"))["target"] != \
        str(tmp_path / "c")
    # the running pool works in storagefs: a volume made there is libvirt's to see
    os.mkdir(mounted.pool(running) / "volumes" / "v.qcow2")
    lv.virsh("pool-refresh", running)
    assert "v.qcow2" in vol_names(lv, running)

    before = snapshot_tree(mounted)
    again = import_libvirt(mounted, lv)
    assert again.returncode == 2, again
    uuid_now = read(mounted.pool(running) / "uuid").strip()
    assert f"unchanged {running}: already imported (uuid {uuid_now})" \
        in again.stdout.splitlines(), again.stdout
    assert not [line for line in again.stdout.splitlines() if line.startswith("imported")]
    assert snapshot_tree(mounted) == before  # byte for byte, mtimes too


def test_dry_run_says_what_it_would_do_and_changes_nothing(mounted, lv, tmp_path):
    t = tag()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lv.virsh("pool-define-as", f"a-{t}", "dir", "--target", tmp_path / "a")
    lv.virsh("pool-autostart", f"a-{t}")
    lv.virsh("pool-define-as", "default", "dir", "--target", tmp_path / "b")
    before = snapshot_tree(mounted)
    res = import_libvirt(mounted, lv, "--dry-run")
    assert f"would import a-{t}: dir autostart" in res.stdout.splitlines(), res
    assert any(line.startswith("would skip default: the name is taken")
               for line in res.stdout.splitlines()), res.stdout
    assert res.returncode == 2
    assert snapshot_tree(mounted) == before
    assert f"a-{t}" not in ls_names(mounted.pools)


def test_rename_imports_a_taken_name_under_another_with_its_uuid(mounted, lv, tmp_path):
    (tmp_path / "a").mkdir()
    lv.virsh("pool-define-as", "default", "dir", "--target", tmp_path / "a")
    res = import_libvirt(mounted, lv, "--rename", "default=libvirt-default")
    assert res.returncode == 0, res
    assert "imported default as libvirt-default: dir" in res.stdout.splitlines()
    pool = mounted.pool("libvirt-default")
    assert read(pool / "uuid").strip() == lv.virsh("pool-uuid", "default").stdout.strip()
    doc = read_bytes(pool / "config.xml")
    assert essentials(doc)["name"] == "libvirt-default"
    assert essentials(doc)["target"] == str(tmp_path / "a")
    # a second run knows it by its uuid
    again = import_libvirt(mounted, lv, "--rename", "default=libvirt-default")
    assert again.returncode == 0 and again.stdout.startswith("unchanged default as"), again
    # under yet another name, its uuid is known: skipped, and said whose it is
    other = import_libvirt(mounted, lv, "--rename", "default=other")
    uuid_now = read(pool / "uuid").strip()
    assert other.returncode == 2 and other.stdout.splitlines() == [
        f"skipped default as other: its uuid {uuid_now} is pool 'libvirt-default''s"], other
    assert "other" not in ls_names(mounted.pools)
    # a bad --rename is refused before anything is done
    bad = import_libvirt(mounted, lv, "--rename", "default")
    assert bad.returncode != 0 and "OLD=NEW" in bad.stderr, bad


def test_no_start_imports_a_running_pool_inactive(mounted, lv, tmp_path):
    name = f"run-{tag()}"
    (tmp_path / "a").mkdir()
    lv.virsh("pool-define-as", name, "dir", "--target", tmp_path / "a")
    lv.virsh("pool-start", name)
    res = import_libvirt(mounted, lv, "--no-start")
    assert res.stdout.splitlines() == [f"imported {name}: dir running in libvirt"], res
    assert read(mounted.pool(name) / "state").strip() == "inactive"


def test_import_of_block_pools_keeps_their_source(mounted, lv, loops):
    """fs, disk and logical definitions (inactive in libvirt: starting them there would
    mount and activate inside libvirtd's namespace) keep devices, formats and names."""
    t = tag()
    fsdev, diskdev, pvdev = loops.make("64M"), loops.make("64M"), loops.make("64M")
    vg = f"sfs_{t}"
    host(["pvcreate", "-q", pvdev.path])
    host(["vgcreate", "-q", vg, pvdev.path])
    try:
        lv.virsh("pool-define-as", f"fs-{t}", "fs", "--source-dev", fsdev.path,
                 "--source-format", "ext4", "--target", f"/mnt/fs-{t}")
        lv.virsh("pool-define-as", f"disk-{t}", "disk", "--source-dev", diskdev.path,
                 "--source-format", "gpt", "--target", "/dev")
        lv.virsh("pool-define-as", f"lvm-{t}", "logical", "--source-name", vg,
                 "--source-dev", pvdev.path, "--target", f"/dev/{vg}")
        lv.virsh("pool-autostart", f"lvm-{t}")
        res = import_libvirt(mounted, lv)
        assert res.returncode == 0, res
        assert lines(res) == {f"imported fs-{t}: fs", f"imported disk-{t}: disk",
                              f"imported lvm-{t}: logical autostart"}, res.stdout
        for name in (f"fs-{t}", f"disk-{t}", f"lvm-{t}"):
            status = read_bytes(mounted.pool(name) / "status.xml")
            assert essentials(status) == essentials(lv.virsh("pool-dumpxml", name).stdout)
        # the devices are pools' sources now: sources/ offers none of them
        for kind in ("fs", "disk", "logical"):
            offered = ls_names(mounted.mnt / "sources" / kind)
            assert not {f"{fsdev.name}.xml", f"{diskdev.name}.xml", f"{vg}.xml"} & offered
    finally:
        for name in (f"fs-{t}", f"disk-{t}", f"lvm-{t}"):
            if os.path.isdir(mounted.pool(name)):
                os.rmdir(mounted.pool(name))
        host(["vgremove", "-q", "-f", vg], check=False)


def test_import_refuses_a_missing_directory_and_reports_a_bad_file(mounted, lv, tmp_path):
    res = subprocess.run([*storagefs_cmd(), "import-libvirt", "--mount", str(mounted.mnt),
                          str(tmp_path / "nothing")], capture_output=True, text=True)
    assert res.returncode == 1 and "cannot read libvirt's pools" in res.stderr, res
    conf = tmp_path / "storage"
    conf.mkdir()
    (conf / "broken.xml").write_text("<pool type='dir'><name>broken</nam")
    (conf / "ok.xml").write_text(
        "<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n"
        + pool_xml("ok-" + tag(), tmp_path, uuid=str(uuid.uuid4())))
    # a dry run says what it would do, for an unreadable file too
    res = subprocess.run([*storagefs_cmd(), "import-libvirt", "--dry-run", "--mount",
                          str(mounted.mnt), "--run-dir", str(tmp_path / "run"), str(conf)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res
    assert any(line.startswith("would skip broken: cannot read")
               for line in res.stdout.splitlines()), res.stdout
    res = subprocess.run([*storagefs_cmd(), "import-libvirt", "--mount", str(mounted.mnt),
                          "--run-dir", str(tmp_path / "run"), str(conf)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res
    assert any(line.startswith(f"skipped broken: cannot read {conf / 'broken.xml'}")
               for line in res.stdout.splitlines()), res.stdout
    assert any(line.startswith("imported ok-") for line in res.stdout.splitlines())


# ---- export ---------------------------------------------------------------------------
def export_to_libvirt(lv, status: bytes, tmp_path: Path, validate: bool = True) -> dict:
    """virsh pool-define of status.xml (copied out: libvirtd's namespace does not see
    FUSE mounts made after it started); returns what pool-dumpxml then says."""
    path = tmp_path / f"export-{tag()}.xml"
    path.write_bytes(status)
    res = lv.virsh("pool-define", *(["--validate"] if validate else []), path)
    assert res.returncode == 0
    return essentials(lv.virsh("pool-dumpxml", essentials(status)["name"]).stdout)


def test_virsh_pool_define_of_status_xml_works_for_every_local_type(mounted, lv, loops,
                                                                   tmp_path):
    t = tag()
    fsdev, diskdev, pvdev = loops.make("64M"), loops.make("64M"), loops.make("64M")
    vg = f"sfs_{t}"
    host(["pvcreate", "-q", pvdev.path])
    host(["vgcreate", "-q", vg, pvdev.path])
    (tmp_path / "d").mkdir()
    docs = {
        f"dir-{t}": pool_xml(f"dir-{t}", tmp_path / "d"),
        f"fs-{t}": f"<pool type='fs'><name>fs-{t}</name><source><device path='{fsdev.path}'/>"
                   f"<format type='ext4'/></source><target><path>/mnt/fs-{t}</path></target>"
                   "</pool>",
        f"disk-{t}": f"<pool type='disk'><name>disk-{t}</name><source>"
                     f"<device path='{diskdev.path}'/><format type='gpt'/></source>"
                     "<target><path>/dev</path></target></pool>",
        f"lvm-{t}": f"<pool type='logical'><name>lvm-{t}</name><source>"
                    f"<device path='{pvdev.path}'/><name>{vg}</name><format type='lvm2'/>"
                    f"</source><target><path>/dev/{vg}</path></target></pool>",
    }
    try:
        for name, doc in docs.items():
            os.mkdir(mounted.pool(name))
            write(mounted.pool(name) / "config.xml", doc)
        command(mounted.pool(f"dir-{t}") / "state", "running")
        for name in docs:
            status = read_bytes(mounted.pool(name) / "status.xml")
            assert export_to_libvirt(lv, status, tmp_path) == essentials(status), name
        # the running dir pool runs in libvirt too, with the same volumes
        os.mkdir(mounted.pool(f"dir-{t}") / "volumes" / "v.raw")
        lv.virsh("pool-start", f"dir-{t}")
        assert vol_names(lv, f"dir-{t}") == ["v.raw"]
    finally:
        for name in docs:
            if os.path.isdir(mounted.pool(name)):
                command(mounted.pool(name) / "state", "inactive")
                os.rmdir(mounted.pool(name))
        host(["vgremove", "-q", "-f", vg], check=False)


def test_a_pool_with_storagefs_settings_exports_as_plain_libvirt_xml(mounted, lv, tmp_path):
    """status.xml leaves storagefs's own namespace out (it validates against libvirt's
    schema); config.xml keeps it, and libvirt takes that too, ignoring the extension."""
    name = f"ext-{tag()}"
    (tmp_path / "d").mkdir()
    extra = ("  <storagefs:volume-defaults xmlns:storagefs='https://storagefs.org/xmlns/pool/"
             "1.0' format='qcow2' capacity='1G'/>\n")
    os.mkdir(mounted.pool(name))
    write(mounted.pool(name) / "config.xml", pool_xml(name, tmp_path / "d", extra))
    status = read_bytes(mounted.pool(name) / "status.xml")
    assert b"volume-defaults" not in status
    assert export_to_libvirt(lv, status, tmp_path) == essentials(status)
    lv.virsh("pool-undefine", name)
    config = read_bytes(mounted.pool(name) / "config.xml")
    assert b"volume-defaults" in config
    got = export_to_libvirt(lv, config, tmp_path, validate=False)
    assert got == {**essentials(status), "uuid": got["uuid"]}


# ---- parsers --------------------------------------------------------------------------
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@given(st.lists(st.tuples(names, names), max_size=4))
def test_parse_renames_takes_pairs_of_pool_names_or_says_which_is_bad(pairs):
    items = [f"{a}={b}" for a, b in pairs]
    try:
        got = importer.parse_renames(items)
    except ValueError as exc:
        assert "--rename" in str(exc)
        return
    for old, new in got.items():
        assert check_name(old) == old and check_name(new) == new
        assert "=" not in old
    assert len(got) == len(items)


@given(st.text(max_size=200))
def test_strip_header_keeps_the_pool_document_from_its_root(comment):
    comment = comment.replace("--", "")
    doc = b"<pool type='dir'><name>p</name><target><path>/x</path></target></pool>"
    data = f"<!--{comment}-->\n".encode() + doc + b"\n\n"
    assert importer.strip_header(data) == doc + b"\n" or b"<pool" in comment.encode()


# ---- network types: export and import of definitions (no server: none is started) ------
def network_docs(t: str, secrets: dict[str, str]) -> dict[str, str]:
    """One pool document per network type storagefs has (netfs in each of its formats),
    as an administrator writes them; ``secrets`` maps usage type -> secret uuid."""
    chap = (f"<auth type='chap' username='alice'><secret uuid='{secrets['iscsi']}'/>"
            "</auth>")
    iqn = f"iqn.2026-12.org.example:t{t}"
    docs = {
        f"iscsid-{t}": f"<pool type='iscsi-direct'><name>iscsid-{t}</name><source>"
                       f"<host name='192.0.2.10' port='3260'/><device path='{iqn}'/>"
                       f"<initiator><iqn name='iqn.2026-12.org.example:host-{t}'/>"
                       f"</initiator>{chap}</source></pool>",
        f"iscsi-{t}": f"<pool type='iscsi'><name>iscsi-{t}</name><source>"
                      f"<host name='192.0.2.11' port='3260'/><device path='{iqn}'/>"
                      f"{chap}</source><target><path>/dev/disk/by-path</path></target>"
                      "</pool>",
        f"gluster-{t}": f"<pool type='gluster'><name>gluster-{t}</name><source>"
                        f"<host name='192.0.2.12'/><dir path='/'/><name>vol{t}</name>"
                        "</source></pool>",
        f"zfs-{t}": f"<pool type='zfs'><name>zfs-{t}</name><source><name>tank{t}</name>"
                    "<device path='/dev/sdz'/></source></pool>",
        f"rbd-{t}": f"<pool type='rbd'><name>rbd-{t}</name><source><name>rbd</name>"
                    "<host name='192.0.2.13' port='6789'/>"
                    "<host name='192.0.2.14' port='3300'/>"
                    f"<auth username='libvirt' type='ceph'><secret uuid='{secrets['ceph']}'/>"
                    "</auth></source></pool>",
        # the secret by its usage, and libvirt's namespace of Ceph client options
        f"rbd-usage-{t}": f"<pool type='rbd' xmlns:rbd='{RBD_NS}'><name>rbd-usage-{t}</name>"
                          "<source><name>images</name><host name='192.0.2.16'/>"
                          "<auth username='libvirt' type='ceph'>"
                          f"<secret usage='client.{t}'/></auth></source>"
                          "<rbd:config_opts><rbd:option name='client_mount_timeout' "
                          "value='45'/></rbd:config_opts></pool>",
    }
    for fmt, src in (("nfs", "<dir path='/export'/>"), ("glusterfs", f"<dir path='/vol{t}'/>"),
                     ("cifs", "<dir path='share'/>"), ("auto", "<dir path='/export2'/>")):
        name = f"netfs-{fmt}-{t}"
        docs[name] = (f"<pool type='netfs'><name>{name}</name><source>"
                      f"<host name='192.0.2.15'/>{src}<format type='{fmt}'/></source>"
                      f"<target><path>/mnt/{name}</path></target></pool>")
    # an NFS version and libvirt's namespace of mount options
    docs[f"netfs-opts-{t}"] = (
        f"<pool type='netfs' xmlns:fs='{FS_NS}'><name>netfs-opts-{t}</name><source>"
        "<host name='192.0.2.17'/><dir path='/export'/><format type='nfs'/>"
        f"<protocol ver='4'/></source><target><path>/mnt/netfs-opts-{t}</path></target>"
        "<fs:mount_opts><fs:option name='sync'/><fs:option name='lazytime'/>"
        "</fs:mount_opts></pool>")
    return docs


def net_essentials(xml: bytes | str) -> dict:
    """``essentials`` with what network sources say: hosts, dir, auth, initiator,
    source format."""
    root = parse(xml)
    src = root.find("source")
    out = essentials(xml)
    out["hosts"] = sorted((h.get("name"), h.get("port")) for h in src.findall("host"))
    out["dir"] = src.find("dir").get("path") if src.find("dir") is not None else None
    auth = src.find("auth")
    out["auth"] = None if auth is None else (
        auth.get("type"), auth.get("username"), auth.find("secret").get("uuid"),
        auth.find("secret").get("usage"))
    iqn = src.find("initiator/iqn")
    out["initiator"] = None if iqn is None else iqn.get("name")
    out["device"] = [d.get("path") for d in src.findall("device")]
    proto = src.find("protocol")
    out["protocol"] = None if proto is None else proto.get("ver")
    out["mount options"] = [o.get("name") for o in root.iter(f"{{{FS_NS}}}option")]
    out["ceph options"] = [(o.get("name"), o.get("value"))
                           for o in root.iter(f"{{{RBD_NS}}}option")]
    return out


SECRET_USAGE = {"iscsi": "<usage type='iscsi'><target>{t}-iscsi</target></usage>",
                "ceph": "<usage type='ceph'><name>client.{t}</name></usage>"}


def define_secrets(m, lv, tmp_path: Path, t: str) -> dict[str, str]:
    """The same secrets (uuid and usage) in storagefs and in libvirt."""
    made = {}
    for kind, usage in SECRET_USAGE.items():
        sid = str(uuid.uuid4())
        doc = (f"<secret ephemeral='no' private='yes'><uuid>{sid}</uuid>"
               f"{usage.format(t=t)}</secret>")
        os.mkdir(m.mnt / "secrets" / sid)
        write(m.mnt / "secrets" / sid / "config.xml", doc)
        path = tmp_path / f"secret-{kind}.xml"
        path.write_text(doc)
        lv.virsh("secret-define", path)
        made[kind] = sid
    return made


def undefine_secrets(m, lv, secrets: dict[str, str]) -> None:
    for sid in secrets.values():
        lv.virsh("secret-undefine", sid, check=False)
        if os.path.isdir(m.mnt / "secrets" / sid):
            os.rmdir(m.mnt / "secrets" / sid)


def test_virsh_pool_define_of_status_xml_works_for_every_network_type(mounted, lv,
                                                                     tmp_path):
    t = tag()
    secrets = define_secrets(mounted, lv, tmp_path, t)
    docs = network_docs(t, secrets)
    seen = {}
    try:
        for name, doc in docs.items():
            os.mkdir(mounted.pool(name))
            write(mounted.pool(name) / "config.xml", doc)
        for name in docs:
            status = read_bytes(mounted.pool(name) / "status.xml")
            path = tmp_path / f"{name}.xml"
            path.write_bytes(status)
            res = lv.virsh("pool-define", "--validate", path, check=False)
            assert res.returncode == 0, (name, res.stderr, status)
            got = net_essentials(lv.virsh("pool-dumpxml", name).stdout)
            assert got == net_essentials(status), name
            seen[name] = got
            lv.virsh("pool-undefine", name)
        # what the comparison covered is there, in libvirt's own words
        assert seen[f"netfs-opts-{t}"]["mount options"] == ["sync", "lazytime"]
        assert seen[f"netfs-opts-{t}"]["protocol"] == "4"
        assert seen[f"rbd-usage-{t}"]["ceph options"] == [("client_mount_timeout", "45")]
        assert seen[f"rbd-usage-{t}"]["auth"] == ("ceph", "libvirt", None, f"client.{t}")
        assert seen[f"rbd-{t}"]["auth"] == ("ceph", "libvirt", secrets["ceph"], None)
        assert seen[f"iscsi-{t}"]["auth"] == ("chap", "alice", secrets["iscsi"], None)
        assert seen[f"iscsid-{t}"]["initiator"] == f"iqn.2026-12.org.example:host-{t}"
    finally:
        for name in docs:
            if os.path.isdir(mounted.pool(name)):
                os.rmdir(mounted.pool(name))
        undefine_secrets(mounted, lv, secrets)


def test_import_of_network_pools_keeps_their_source_and_auth(mounted, lv, tmp_path):
    """Defined with ``virsh pool-define`` (not started), imported: status.xml says what
    ``virsh pool-dumpxml`` says, hosts, ports, secrets and initiator included."""
    t = tag()
    secrets = define_secrets(mounted, lv, tmp_path, t)
    docs = network_docs(t, secrets)
    try:
        for name, doc in docs.items():
            path = tmp_path / f"{name}.xml"
            path.write_text(doc)
            lv.virsh("pool-define", "--validate", path)
        lv.virsh("pool-autostart", f"rbd-{t}")
        res = import_libvirt(mounted, lv)
        assert res.returncode == 0, res
        want = {f"imported {name}: {parse(doc).get('type')}" for name, doc in docs.items()}
        want = {line + (" autostart" if line.startswith(f"imported rbd-{t}") else "")
                for line in want}
        assert lines(res) == want, res.stdout
        for name in docs:
            pool = mounted.pool(name)
            assert read(pool / "state").strip() == "inactive", name
            status = read_bytes(pool / "status.xml")
            assert net_essentials(status) == \
                net_essentials(lv.virsh("pool-dumpxml", name).stdout), name
        assert read(mounted.pool(f"rbd-{t}") / "autostart").strip() == "yes"
        # and a second run changes nothing
        again = import_libvirt(mounted, lv)
        assert again.returncode == 0 and all(
            line.startswith("unchanged ") for line in again.stdout.splitlines()), again
    finally:
        for name in docs:
            if os.path.isdir(mounted.pool(name)):
                os.rmdir(mounted.pool(name))
        undefine_secrets(mounted, lv, secrets)


def test_a_chap_iscsi_direct_pool_exported_runs_in_libvirt_with_the_same_secret(
        mounted, lv, tgt_server, tmp_path):  # noqa: F811
    """The whole way for a pool with an <auth> secret: storagefs runs it against a real
    target that requires CHAP; its status.xml, and the secret's config.xml with the same
    password, go to libvirt, which starts the pool and lists the same LUNs."""
    t = tag()
    tgt_server.ensure()
    tid, iqn = tgt_server.target(f"export-{t}", [4 * 1024**2, 8 * 1024**2])
    user, password = f"u{t}", f"chap-{t}-secret"
    tgt_server.account(user, password)
    tgt_server.require_chap(tid, user)
    sid = str(uuid.uuid4())
    secret = (f"<secret ephemeral='no' private='yes'><uuid>{sid}</uuid>"
              f"<usage type='iscsi'><target>{iqn}</target></usage></secret>")
    os.mkdir(mounted.mnt / "secrets" / sid)
    write(mounted.mnt / "secrets" / sid / "config.xml", secret)
    write(mounted.mnt / "secrets" / sid / "value", password)
    host_, port = tgt_server.portal.split(":")
    name = f"chap-{t}"
    doc = (f"<pool type='iscsi-direct'><name>{name}</name><source>"
           f"<host name='{host_}' port='{port}'/><device path='{iqn}'/>"
           f"<initiator><iqn name='{INITIATOR}'/></initiator>"
           f"<auth type='chap' username='{user}'><secret uuid='{sid}'/></auth>"
           "</source></pool>")
    pool = mounted.pool(name)
    try:
        os.mkdir(pool)
        write(pool / "config.xml", doc)
        command(pool / "control", "start")
        luns = sorted(os.listdir(pool / "volumes"))
        assert luns == ["unit:0:0:1", "unit:0:0:2"]
        status = read_bytes(pool / "status.xml")
        assert export_to_libvirt(lv, status, tmp_path) == essentials(status)
        (tmp_path / "secret.xml").write_text(secret)
        lv.virsh("secret-define", tmp_path / "secret.xml")
        value = tmp_path / "value"
        value.touch(mode=0o600)
        value.write_text(password)
        lv.virsh("secret-set-value", sid, "--file", value, "--plain")
        value.unlink()
        lv.virsh("pool-start", name)  # libvirt logs in with the password of its secret
        # the same LUNs; libvirt lists tgtd's LUN 0 too (no blocks: storagefs leaves it out)
        assert vol_names(lv, name) == ["unit:0:0:0", *luns]
        lv.virsh("pool-destroy", name)
    finally:
        if os.path.isdir(pool):
            command(pool / "state", "inactive")
            os.rmdir(pool)
        lv.virsh("secret-undefine", sid, check=False)
        if os.path.isdir(mounted.mnt / "secrets" / sid):
            os.rmdir(mounted.mnt / "secrets" / sid)
        tgt_server.remove_target(tid)


def test_a_gluster_pool_exported_runs_in_libvirt_with_the_same_volumes(
        mounted, lv, gluster_volume, tmp_path):  # noqa: F811
    """A gluster pool storagefs runs on a real volume: libvirt takes its status.xml,
    starts it (gfapi) and lists the image storagefs made, at the same URL."""
    host_, vol = gluster_volume.server.host, gluster_volume.name
    name = f"gl-{tag()}"
    pool = mounted.pool(name)
    try:
        os.mkdir(pool)
        write(pool / "config.xml", f"<pool type='gluster'><name>{name}</name><source>"
                                   f"<host name='{host_}'/><dir path='/'/><name>{vol}</name>"
                                   "</source></pool>")
        command(pool / "control", "start")
        command(pool / "control", "create v.qcow2 16M")
        status = read_bytes(pool / "status.xml")
        assert export_to_libvirt(lv, status, tmp_path) == essentials(status)
        lv.virsh("pool-start", name)
        assert vol_names(lv, name) == ["v.qcow2"]
        url = parse(read_bytes(pool / "volumes" / "v.qcow2" / "status.xml")).findtext(
            "target/path")
        assert parse(lv.virsh("vol-dumpxml", "--pool", name, "v.qcow2").stdout).findtext(
            "target/path") == url
        lv.virsh("pool-destroy", name)
    finally:
        if os.path.isdir(pool):
            command(pool / "state", "inactive")
            os.rmdir(pool)  # the volume goes with the test's Gluster volume


def test_a_cephx_rbd_pool_exported_runs_in_libvirt_with_the_same_secret(
        mounted, lv, ceph_cephx, tmp_path):  # noqa: F811
    """An rbd pool storagefs runs with a cephx key from secrets/: its status.xml, and the
    secret with the same key, make libvirt start it and list the image storagefs made."""
    c, t = ceph_cephx, tag()
    sid = str(uuid.uuid4())
    secret = (f"<secret ephemeral='no' private='yes'><uuid>{sid}</uuid>"
              f"<usage type='ceph'><name>client.{c.client_id} {t}</name></usage></secret>")
    os.mkdir(mounted.mnt / "secrets" / sid)
    write(mounted.mnt / "secrets" / sid / "config.xml", secret)
    write(mounted.mnt / "secrets" / sid / "value", c.client_key + "\n")
    name, image = f"rbd-{t}", f"img-{t}"
    pool = mounted.pool(name)
    try:
        os.mkdir(pool)
        write(pool / "config.xml", f"<pool type='rbd'><name>{name}</name><source>"
                                   f"<name>{CEPH_POOL}</name>"
                                   f"<host name='127.0.0.1' port='{c.v1}'/>"
                                   f"<auth username='{c.client_id}' type='ceph'>"
                                   f"<secret uuid='{sid}'/></auth></source></pool>")
        command(pool / "control", "start")
        command(pool / "control", f"create {image} 8M")
        status = read_bytes(pool / "status.xml")
        assert export_to_libvirt(lv, status, tmp_path) == essentials(status)
        (tmp_path / "secret.xml").write_text(secret)
        lv.virsh("secret-define", tmp_path / "secret.xml")
        value = tmp_path / "value"
        value.touch(mode=0o600)
        value.write_text(c.client_key)  # base64, as ceph auth get-key prints it
        lv.virsh("secret-set-value", sid, "--file", value)
        value.unlink()
        lv.virsh("pool-start", name)
        assert image in vol_names(lv, name)
        assert parse(lv.virsh("vol-dumpxml", "--pool", name, image).stdout).findtext(
            "key") == parse(read_bytes(pool / "volumes" / image / "status.xml")).findtext(
            "key")
        lv.virsh("pool-destroy", name)
    finally:
        if os.path.isdir(pool / "volumes" / image):
            os.rmdir(pool / "volumes" / image)
        if os.path.isdir(pool):
            command(pool / "state", "inactive")
            os.rmdir(pool)
        lv.virsh("secret-undefine", sid, check=False)
        if os.path.isdir(mounted.mnt / "secrets" / sid):
            os.rmdir(mounted.mnt / "secrets" / sid)
