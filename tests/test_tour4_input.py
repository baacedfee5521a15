"""Tour 4 (input): what documents, queries and libvirt's files say never reaches
outside the mount or a host tool's options.

- import-libvirt refuses a pool name or uuid storagefs would not take before it
  makes anything (a dry run says the same), and a definition without a uuid is
  "unchanged" on a second run;
- a source host, name, device or directory that would become a host tool's option
  (starts with '-'), a host that is no host name or address, '..' in a source
  directory or dataset and a port outside 1-65535 are refused at define / at the
  sources/ query write, before any tool runs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from mount_helpers import (
    assert_one_error_line,
    command,
    ls_names,
    read,
    storagefs_cmd,
    write,
    write_errno,
)


def import_dir(m, conf: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*storagefs_cmd(), "import-libvirt", "--mount", str(m.mnt), "--run-dir",
         str(run_dir), *extra, str(conf)], capture_output=True, text=True, timeout=120)


# ---- A: names and uuids of libvirt's files ----------------------------------------
BAD_NAMES = ["../../t4evil", "../t4evil", "..", ".hidden", "a/b", "tab\tname"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_import_refuses_a_name_storagefs_would_not_take_before_touching_anything(
        mounted, tmp_path, name):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    (conf / "autostart").mkdir()
    target = tmp_path / "x"
    (conf / "e.xml").write_text(
        f"<pool type='dir'><name>{name}</name>"
        "<uuid>11111111-2222-3333-4444-777777777777</uuid>"
        f"<target><path>{target}</path></target></pool>")
    before = ls_names(mounted.pools)
    outside = {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()}
    res = import_dir(mounted, conf, run_dir, "--dry-run")
    assert res.returncode == 2, res
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"would skip {name}: pool name"), lines
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2, res
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped {name}: pool name"), lines
    assert lines[0].split(": ", 1)[1] == \
        import_dir(mounted, conf, run_dir, "--dry-run").stdout.split(": ", 1)[1].strip()
    assert ls_names(mounted.pools) == before
    now = {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()}
    assert now == outside, now - outside


def test_import_refuses_a_uuid_that_is_not_one_and_never_follows_it(mounted, tmp_path):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    # mnt/pools/by-uuid/../../../evil is tmp_path/evil: a link there must not be read
    (tmp_path / "evil").symlink_to("/nowhere/victim")
    (conf / "u.xml").write_text(
        "<pool type='dir'><name>u</name><uuid>../../../evil</uuid>"
        f"<target><path>{tmp_path / 'u'}</path></target></pool>")
    for extra, action in ((("--dry-run",), "would skip"), ((), "skipped")):
        res = import_dir(mounted, conf, run_dir, *extra)
        assert res.returncode == 2, res
        assert res.stdout.splitlines() == [
            f"{action} u: uuid '../../../evil' is not a uuid"], res.stdout
    assert "u" not in ls_names(mounted.pools)


def test_import_of_a_definition_without_uuid_is_unchanged_the_second_time(
        mounted, tmp_path):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    doc = ("<pool type='dir'><name>other</name>"
           f"<target><path>{tmp_path / 'other'}</path></target></pool>")
    (conf / "other.xml").write_text(doc)
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 0 and res.stdout.startswith("imported other: dir"), res
    uuid = read(mounted.pool("other") / "uuid").strip()
    config = (mounted.pool("other") / "config.xml").read_bytes()
    for extra in (("--dry-run",), ()):
        res = import_dir(mounted, conf, run_dir, *extra)
        assert res.returncode == 0, res
        assert res.stdout.splitlines() == [
            f"unchanged other: already imported (uuid {uuid})"], res.stdout
    assert (mounted.pool("other") / "config.xml").read_bytes() == config
    # another document of that name is still another pool's name
    (conf / "other.xml").write_text(doc.replace("/other<", "/other2<"))
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2, res
    assert res.stdout.startswith(
        f"skipped other: the name is taken by pool 'other' with uuid {uuid}"), res.stdout
    # and a document with another uuid too
    (conf / "other.xml").write_text(
        doc.replace("<name>other</name>",
                    "<name>other</name><uuid>11111111-2222-3333-4444-888888888888</uuid>"))
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2 and res.stdout.startswith("skipped other: the name is"), res


# ---- C, D: source fields that a host tool would misread ---------------------------
def _src(kind: str, source: str, target: str | None = "/work/tour4/nx") -> str:
    tgt = f"<target><path>{target}</path></target>" if target else ""
    return f"<pool type='{kind}'><name>NAME</name><source>{source}</source>{tgt}</pool>"


AUTH = "<auth type='ceph' username='{u}'><secret usage='ceph-u'/></auth>"
REFUSED = [
    # C: names, hosts, devices that start with '-', hosts that are no host
    ("rbd", _src("rbd", "<name>--keyring=/etc/shadow</name><host name='h'/>", None),
     "source name '--keyring=/etc/shadow' cannot start with '-'"),
    ("rbd", _src("rbd", "<name>p</name><host name='--mon-host=x'/>", None),
     "source host '--mon-host=x' cannot start with '-'"),
    ("rbd", _src("rbd", "<name>p</name><host name='h'/>" + AUTH.format(u="-n"), None),
     "auth username '-n' cannot start with '-'"),
    ("netfs", _src("netfs", "<host name='-B'/><dir path='/work/tour4/bsrc'/>"
                   "<format type='auto'/>"), "source host '-B' cannot start with '-'"),
    ("netfs", _src("netfs", "<host name='a b'/><dir path='/x'/><format type='nfs'/>"),
     "source host 'a b' is not a host name or an IP address"),
    ("netfs", _src("netfs", "<host name='h;reboot'/><dir path='/x'/>"),
     "source host 'h;reboot' is not a host name or an IP address"),
    ("netfs", _src("netfs", "<host name='h'/><dir path='-o'/><format type='cifs'/>"),
     "source dir path '-o' cannot start with '-'"),
    ("gluster", _src("gluster", "<host name='-x'/><name>v</name>", None),
     "source host '-x' cannot start with '-'"),
    ("gluster", _src("gluster", "<host name='h'/><name>--remote-host=h2</name>", None),
     "source name '--remote-host=h2' cannot start with '-'"),
    ("iscsi", _src("iscsi", "<host name='-p'/><device path='iqn.2020-01.x:t'/>",
                   "/dev/disk/by-path"), "source host '-p' cannot start with '-'"),
    ("iscsi", _src("iscsi", "<host name='h'/><device path='--op=delete'/>",
                   "/dev/disk/by-path"), "source device path '--op=delete' cannot start"),
    ("iscsi-direct", _src("iscsi-direct", "<host name='h'/><device path='iqn.2020-01.x:t'/>"
                          "<initiator><iqn name='-I'/></initiator>", None),
     "initiator IQN '-I' cannot start with '-'"),
    ("logical", _src("logical", "<name>-vg</name><device path='/dev/loop7'/>", None),
     "source name '-vg' cannot start with '-'"),
    ("logical", _src("logical", "<name>vg</name><device path='-ff'/>", None),
     "source device path '-ff' cannot start with '-'"),
    ("disk", _src("disk", "<device path='--wipe'/>", "/dev"),
     "source device path '--wipe' cannot start with '-'"),
    ("fs", _src("fs", "<device path='-o'/>"), "source device path '-o' cannot start"),
    ("zfs", _src("zfs", "<name>-f</name>", None), "source name '-f' cannot start with '-'"),
    # D: '..' components and ports
    ("gluster", _src("gluster", "<host name='h'/><name>v</name><dir path='/../../etc'/>",
                     None), "source dir path '/../../etc' cannot have a '..' component"),
    ("netfs", _src("netfs", "<host name='h'/><dir path='/srv/../etc'/>"),
     "source dir path '/srv/../etc' cannot have a '..' component"),
    ("zfs", _src("zfs", "<name>tank/../../x</name>", None),
     "source name 'tank/../../x' cannot have a '..' component"),
    ("rbd", _src("rbd", "<name>p</name><host name='h' port='99999'/>", None),
     "source host port 99999 is not 1-65535"),
    ("iscsi", _src("iscsi", "<host name='h' port='0'/><device path='iqn.2020-01.x:t'/>",
                   "/dev/disk/by-path"), "source host port 0 is not 1-65535"),
    ("gluster", _src("gluster", "<host name='h' port='-1'/><name>v</name>", None),
     "source host port -1 is not 1-65535"),
]


@pytest.mark.parametrize(("kind", "doc", "reason"), REFUSED,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(REFUSED)])
def test_a_source_field_a_tool_would_misread_is_refused_at_define(
        mounted, kind, doc, reason):
    pdir = mounted.pool("p4")
    os.mkdir(pdir)
    code, _ = write_errno(pdir / "config.xml", doc.replace("NAME", "p4"))
    assert code == errno.EINVAL, (code, doc)
    line = assert_one_error_line(pdir)
    assert reason in line, line
    assert not (pdir / "uuid").exists() or read(pdir / "uuid").strip() == ""
    # and no host tool ever saw it
    ran = [x for x in mounted.log().splitlines() if "storagefs.hostcmd: running" in x]
    assert not any(w in x for x in ran for w in ("p4", "-B", "shadow", "/../")), ran


QUERIES = [("netfs", "-h", "query '-h' cannot start with '-'"),
           ("netfs", "--version", "query '--version' cannot start with '-'"),
           ("netfs", "-e", "query '-e' cannot start with '-'"),
           ("netfs", "--remote-host=127.0.0.2", "cannot start with '-'"),
           ("netfs", "h:99999", "port 99999 is not 1-65535"),
           ("netfs", "h;id", "host 'h;id' is not a host name or an IP address"),
           ("gluster", "--remote-host=127.0.0.2", "cannot start with '-'"),
           ("iscsi", "-p:3260", "cannot start with '-'"),
           ("logical", "-x", "query '-x' cannot start with '-'"),
           ("disk", "--help", "query '--help' cannot start with '-'")]


@pytest.mark.parametrize(("kind", "query", "reason"), QUERIES)
def test_a_query_a_tool_would_read_as_an_option_is_refused_before_any_tool_runs(
        mounted, kind, query, reason):
    k = mounted.mnt / "sources" / kind
    if not k.is_dir():
        pytest.fail(f"sources/{kind} is missing: {ls_names(k.parent)}")
    before = ls_names(k)
    code, _ = write_errno(k / "query", f"{query}\n")
    assert code == errno.EINVAL, (kind, query, code)
    assert reason in assert_one_error_line(k)
    assert ls_names(k) == before
    ran = [x for x in mounted.log().splitlines() if "storagefs.hostcmd: running" in x]
    assert not any(query in x for x in ran), ran


def test_mount_gets_the_source_after_a_double_dash(mounted, tmp_path):
    """Defence in depth: mount(8) is given '--' before the source and the target (an
    fs pool on a loop device, mounted for real)."""
    from loopdev import LoopSet

    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")
        target = tmp_path / "fsmnt"
        pdir = mounted.pool("fs4")
        os.mkdir(pdir)
        write(pdir / "config.xml",
              f"<pool type='fs'><name>fs4</name><source><device path='{dev.path}'/>"
              f"<format type='ext4'/></source><target><path>{target}</path></target></pool>")
        command(pdir / "control", "build")
        command(pdir / "state", "running")
        try:
            assert read(pdir / "state").strip() == "running"
            ran = [x.split("running ", 1)[1] for x in mounted.log().splitlines()
                   if "storagefs.hostcmd: running mount " in x]
            assert any(x.endswith(f" -- {dev.path} {target}") for x in ran), ran
        finally:
            command(pdir / "state", "inactive")


@pytest.mark.log_allows("stored definition unusable")
def test_a_stored_definition_with_such_a_source_is_never_started(mounted, tmp_path):
    """A record an older storagefs accepted (or someone edited) is shown inaccessible,
    with the reason, and never reaches mount(8), autostart or not."""
    m = mounted
    pdir = m.pool("old4")
    os.mkdir(pdir)
    write(pdir / "config.xml", _src("netfs", "<host name='h'/><dir path='/x'/>"
                                    "<format type='auto'/>", str(tmp_path / "nx"))
          .replace("NAME", "old4"))
    command(pdir / "autostart", "yes")
    m.stop()
    rec = m.state_dir / "pools" / "old4.json"
    raw = json.loads(rec.read_text())
    raw["config"] = raw["config"].replace("name='h'", "name='-B'")
    raw["active"] = True
    rec.write_text(json.dumps(raw))
    m.start()
    assert read(pdir / "state") == "inaccessible\n"
    assert "source host '-B' cannot start with '-'" in assert_one_error_line(pdir)
    ran = [x for x in m.log().splitlines() if "storagefs.hostcmd: running" in x]
    assert not any("-B" in x for x in ran), ran


def test_a_logical_volume_name_starting_with_a_dash_is_refused(mounted, tmp_path):
    """A guard (it was refused already): lvcreate --name takes the next word whatever
    it is, so a name starting with '-' is refused at mkdir and in 'create', before
    lvcreate runs (a VG on a loop device)."""
    from loopdev import LoopSet

    vg = f"sfs4_{uuid.uuid4().hex[:8]}"
    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")
        pdir = mounted.pool("lv4")
        os.mkdir(pdir)
        write(pdir / "config.xml", _src("logical", f"<device path='{dev.path}'/><name>{vg}"
                                        "</name><format type='lvm2'/>", None)
              .replace("NAME", "lv4"))
        command(pdir / "control", "build")
        command(pdir / "state", "running")
        try:
            with pytest.raises(OSError) as exc:
                os.mkdir(pdir / "volumes" / "-lv")
            assert exc.value.errno == errno.EINVAL
            assert 'Logical volume name "-lv" is invalid' in assert_one_error_line(pdir)
            code, _ = write_errno(pdir / "control", "create --lv 8M\n")
            assert code == errno.EINVAL
            assert ls_names(pdir / "volumes") == set()
            ran = [x for x in mounted.log().splitlines() if "running lvcreate" in x]
            assert ran == [], ran
        finally:
            command(pdir / "state", "inactive")
            command(pdir / "control", "delete")
