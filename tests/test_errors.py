"""Issue 3 section 8: errors. A refused operation fails in the syscall itself
with SPEC's errno, changes nothing, leaves one line in the object's `error`
file and in the log; the mount survives every bad input."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from mount_helpers import (
    GiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    pool_xml,
    qemu_info,
    read,
    run,
    sh,
    volume_xml,
    write_errno,
    xml_value,
)


def _refused_mkdir(path) -> int:
    with pytest.raises(OSError) as exc:
        os.mkdir(path)
    return exc.value.errno


@pytest.fixture
def pool1(mounted, tmp_path):
    p = define_pool(mounted, "p1", tmp_path / "p1")
    return p, read(p / "config.xml")


# ---------------------------------------------------------------- commands


def test_bad_command_fails_write_with_einval(mounted):
    p = mounted.pool()
    log_before = len(mounted.log())
    assert write_errno(p / "control", "frobnicate\n") == (errno.EINVAL, "write")
    assert read(p / "state") == "running\n"
    line = assert_one_error_line(p)
    assert "frobnicate" in line
    new_log = mounted.log()[log_before:]
    assert "frobnicate" in new_log, "the refusal must be logged"


def test_bad_command_from_shell_shows_write_error(mounted):
    res = sh(f"echo frobnicate > {mounted.pool()}/control", check=False)
    assert res.returncode != 0
    assert "Invalid argument" in res.stderr


def test_bad_command_argument_is_einval(mounted):
    assert write_errno(mounted.pool() / "control", "build sideways\n") == (errno.EINVAL, "write")
    assert_one_error_line(mounted.pool())


# ---------------------------------------------------------------- XML


def test_malformed_xml_fails_the_write_itself(pool1):
    p, before = pool1
    bad = "<pool type='dir'><name>p1</nam></pool>\n"
    assert write_errno(p / "config.xml", bad) == (errno.EINVAL, "write")
    assert read(p / "config.xml") == before
    assert read(p / "state") == "running\n"
    assert_one_error_line(p)


def test_text_before_root_fails_the_write_itself(pool1):
    p, before = pool1
    assert write_errno(p / "config.xml", "hello <pool/>") == (errno.EINVAL, "write")
    assert read(p / "config.xml") == before


def test_garbage_fails_first_write_before_document_completes(pool1):
    p, before = pool1
    fd = os.open(p / "config.xml", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"<pool type='dir'>\n  <name>p1</name>\n")
        with pytest.raises(OSError) as exc:
            os.write(fd, b"  </target>\n")
        assert exc.value.errno == errno.EINVAL
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert read(p / "config.xml") == before


def test_incomplete_document_fails_at_close(pool1):
    p, before = pool1
    fd = os.open(p / "config.xml", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"<pool type='dir'>\n  <name>p1</name>\n")
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.EINVAL
    assert read(p / "config.xml") == before
    assert_one_error_line(p)


def test_incomplete_document_from_cp_reports_error(pool1, tmp_path):
    p, before = pool1
    src = tmp_path / "half.xml"
    src.write_text("<pool type='dir'>\n  <name>p1</name>\n")
    res = run(["cp", src, p / "config.xml"], check=False)
    assert res.returncode != 0
    assert read(p / "config.xml") == before


def test_document_is_applied_in_the_write_that_completes_it(mounted, tmp_path):
    os.mkdir(mounted.pool("p2"))
    doc = pool_xml("p2", tmp_path / "p2").encode()
    half = len(doc) // 2
    fd = os.open(mounted.pool("p2") / "config.xml", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, doc[:half])
        assert ls_names(mounted.pool("p2")) == {"config.xml"}, "applied before complete"
        os.write(fd, doc[half:])
        # still open: the definition must already be in place
        assert "status.xml" in ls_names(mounted.pool("p2"))
        assert read(mounted.pool("p2") / "state") == "inactive\n"
    finally:
        os.close(fd)


def test_xml_entities_are_refused(pool1, tmp_path):
    p, before = pool1
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET\n")
    doc = (f'<!DOCTYPE pool [<!ENTITY x SYSTEM "file://{secret}">]>\n'
           f"<pool type='dir'><name>p1</name><target><path>&x;</path></target></pool>\n")
    code, _ = write_errno(p / "config.xml", doc)
    assert code == errno.EINVAL
    assert read(p / "config.xml") == before
    assert "TOPSECRET" not in read(p / "status.xml")


def test_billion_laughs_is_refused_and_mount_survives(pool1):
    p, before = pool1
    ents = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = f"<!DOCTYPE pool [{ents}]>\n<pool type='dir'><name>&a9;</name></pool>\n"
    code, _ = write_errno(p / "config.xml", doc)
    assert code == errno.EINVAL
    assert read(p / "config.xml") == before


def test_oversized_document_is_refused_and_mount_survives(pool1):
    p, before = pool1
    doc = "<pool type='dir'><name>p1</name><!-- " + "x" * (16 * 1024 * 1024) + " -->"
    code, _ = write_errno(p / "config.xml", doc + "</pool>\n")
    assert code is not None, "a 16 MiB document must be refused"
    assert read(p / "config.xml") == before
    assert read(p / "state") == "running\n"


def test_wrong_root_element_is_einval(pool1):
    p, before = pool1
    code, call = write_errno(p / "config.xml", volume_xml("p1", GiB))
    assert (code, call) == (errno.EINVAL, "write")
    assert read(p / "config.xml") == before


def test_refused_rename_leaves_old_definition(pool1):
    p, before = pool1
    with open(p / "scratch.xml", "w") as f:
        f.write("<pool type='dir'><name>p1</name></pool>\n<oops")
    with pytest.raises(OSError) as exc:
        os.rename(p / "scratch.xml", p / "config.xml")
    assert exc.value.errno == errno.EINVAL
    assert read(p / "config.xml") == before


def test_unknown_volume_format_is_einval(mounted):
    os.mkdir(mounted.vol("disk1"))
    code, call = write_errno(mounted.vol("disk1") / "config.xml",
                             volume_xml("disk1", GiB, fmt="floppy"))
    assert (code, call) == (errno.EINVAL, "write")
    assert qemu_info(mounted.images / "disk1")["format"] == "raw"
    assert_one_error_line(mounted.vol("disk1"))


def test_volume_xml_with_other_name_is_einval(mounted):
    os.mkdir(mounted.vol("disk1"))
    before = read(mounted.vol("disk1") / "config.xml")
    code, call = write_errno(mounted.vol("disk1") / "config.xml", volume_xml("disk2", GiB))
    assert (code, call) == (errno.EINVAL, "write")
    assert read(mounted.vol("disk1") / "config.xml") == before
    assert "disk2" not in ls_names(mounted.pool() / "volumes")
    assert not (mounted.images / "disk2").exists()


# ---------------------------------------------------------------- names taken


def test_mkdir_existing_pool_is_eexist(mounted):
    assert _refused_mkdir(mounted.pool("default")) == errno.EEXIST


def test_mkdir_existing_volume_is_eexist(mounted):
    os.mkdir(mounted.vol("disk1"))
    assert _refused_mkdir(mounted.vol("disk1")) == errno.EEXIST


def test_mkdir_volume_over_unrefreshed_external_file_is_eexist_and_keeps_it(mounted):
    (mounted.images / "ext.img").write_bytes(b"someone else's data")
    assert _refused_mkdir(mounted.vol("ext.img")) == errno.EEXIST
    assert (mounted.images / "ext.img").read_bytes() == b"someone else's data"


def test_pool_with_taken_uuid_is_eexist(mounted, tmp_path):
    uuid = read(mounted.pool() / "uuid").strip()
    os.mkdir(mounted.pool("p2"))
    doc = pool_xml("p2", tmp_path / "p2", uuid=uuid)
    assert write_errno(mounted.pool("p2") / "config.xml", doc) == (errno.EEXIST, "write")
    assert ls_names(mounted.pool("p2")) == {"config.xml", "error"}  # pending: and why refused
    assert os.readlink(mounted.pools / "by-uuid" / uuid) == "../default"


# ---------------------------------------------------------------- wrong state


def test_changing_target_of_running_pool_is_ebusy(pool1, tmp_path):
    p, before = pool1
    code, call = write_errno(p / "config.xml", pool_xml("p1", tmp_path / "elsewhere"))
    assert (code, call) == (errno.EBUSY, "write")
    assert read(p / "config.xml") == before
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1")
    assert_one_error_line(p)


def test_rmdir_running_pool_is_ebusy_and_error_recorded(pool1):
    p, _ = pool1
    with pytest.raises(OSError) as exc:
        os.rmdir(p)
    assert exc.value.errno == errno.EBUSY
    assert_one_error_line(p)


def test_start_without_target_directory_fails_and_stays_inactive(mounted, tmp_path):
    p = define_pool(mounted, "p2", tmp_path / "missing", build=False, start=False)
    code, call = write_errno(p / "control", "start\n")
    assert call == "write" and code is not None
    assert read(p / "state") == "inactive\n"
    assert_one_error_line(p)


# ---------------------------------------------------------------- hostile names


def test_pool_name_with_leading_dot_is_refused(mounted):
    assert _refused_mkdir(mounted.pool(".hidden")) == errno.EINVAL
    assert ".hidden" not in ls_names(mounted.pools)


def test_volume_name_with_leading_dot_is_refused(mounted):
    assert _refused_mkdir(mounted.vol(".hidden")) == errno.EINVAL
    assert not (mounted.images / ".hidden").exists()
    assert ".hidden" not in ls_names(mounted.pool() / "volumes")


def test_name_over_255_bytes_is_refused(mounted):
    long = "v" * 300
    assert _refused_mkdir(mounted.vol(long)) in (errno.ENAMETOOLONG, errno.EINVAL)
    assert _refused_mkdir(mounted.pool(long)) in (errno.ENAMETOOLONG, errno.EINVAL)
    assert not any(len(n) > 255 for n in os.listdir(mounted.images))


def test_name_with_slash_in_xml_is_refused(mounted, tmp_path):
    os.mkdir(mounted.pool("p2"))
    code, _ = write_errno(mounted.pool("p2") / "config.xml", pool_xml("../p2", tmp_path / "x"))
    assert code == errno.EINVAL
    os.mkdir(mounted.vol("disk1"))
    code, _ = write_errno(mounted.vol("disk1") / "config.xml", volume_xml("../../evil", GiB))
    assert code == errno.EINVAL
    assert not (mounted.state_dir / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_volume_target_path_outside_pool_is_never_used(mounted, tmp_path):
    os.mkdir(mounted.vol("disk1"))
    outside = tmp_path / "outside.img"
    doc = volume_xml("disk1", 2 * GiB).replace(
        "  <target>\n", f"  <target>\n    <path>{outside}</path>\n")
    write_errno(mounted.vol("disk1") / "config.xml", doc)
    assert not outside.exists()
    assert os.readlink(mounted.vol("disk1") / "path") == str(mounted.images / "disk1")


def test_symlink_in_target_never_reaches_outside(mounted, tmp_path):
    victim = tmp_path / "victim.img"
    victim.write_bytes(b"outside data")
    os.symlink(victim, mounted.images / "evil.img")
    command(mounted.pool() / "control", "refresh")
    if "evil.img" in ls_names(mounted.pool() / "volumes"):
        v = mounted.vol("evil.img")
        write_errno(v / "config.xml", volume_xml("evil.img", 2 * GiB, allocation=2 * GiB))
        try:
            os.rmdir(v)
        except OSError:
            pass
    assert victim.read_bytes() == b"outside data"


# ---------------------------------------------------------------- only rmdir destroys


def test_rm_rf_pool_fails_with_eperm_and_destroys_nothing(pool1, tmp_path):
    p, before = pool1
    os.mkdir(p / "volumes" / "v1")
    uuid = read(p / "uuid")
    res = run(["rm", "-rf", p], check=False)
    assert res.returncode != 0
    assert "Operation not permitted" in res.stderr
    assert "p1" in ls_names(p.parent)
    assert read(p / "state") == "running\n"
    assert read(p / "uuid") == uuid
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1")
    assert (tmp_path / "p1" / "v1").is_file()
    assert "v1" in ls_names(p / "volumes")
    assert read(p / "volumes" / "v1" / "format") == "raw\n"


def test_rm_r_volume_fails_with_eperm_and_destroys_nothing(mounted):
    os.mkdir(mounted.vol("disk1"))
    res = run(["rm", "-r", mounted.vol("disk1")], check=False)
    assert res.returncode != 0
    assert "Operation not permitted" in res.stderr
    assert (mounted.images / "disk1").is_file()
    assert "disk1" in ls_names(mounted.pool() / "volumes")
    assert os.readlink(mounted.vol("disk1") / "path") == str(mounted.images / "disk1")


@pytest.mark.parametrize("name", ["status.xml", "state", "uuid", "capacity", "type"])
def test_unlink_of_generated_file_is_eperm(mounted, name):
    with pytest.raises(OSError) as exc:
        os.unlink(mounted.pool() / name)
    assert exc.value.errno == errno.EPERM
    assert name in ls_names(mounted.pool())


def test_write_to_generated_file_is_refused(mounted):
    for name in ("status.xml", "uuid", "capacity"):
        code, _ = write_errno(mounted.pool() / name, "x\n")
        assert code in (errno.EACCES, errno.EPERM, errno.EROFS), (name, code)
    assert read(mounted.pool() / "type") == "dir\n"


# ---------------------------------------------------------------- the mount survives


def test_mount_survives_a_barrage_of_bad_input(mounted, tmp_path):
    p = mounted.pool()
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    junk = [b"\x00\xff\xfe garbage", b"<", b"<?xml version='1.0'?>", b"\n" * 10,
            b"<pool type='nonsense'><name>default</name></pool>",
            b"<pool><name>default</name><capacity unit='parsecs'>1</capacity></pool>",
            b"<volume><name>disk1</name><capacity unit='lightyears'>1</capacity></volume>",
            b"<volume><name>disk1</name><capacity>-5</capacity></volume>",
            b"<volume><name>disk1</name><capacity>99999999999999999999999999</capacity></volume>",
            "<pool><name>d\u00e9fault</name></pool>".encode()]
    for target in (p / "config.xml", v / "config.xml", p / "control", v / "control",
                   p / "state", p / "autostart"):
        for data in junk:
            write_errno(target, data)
    for bad in ("resize", "resize -1", "resize 1parsec", "start now please", "\x00", "\n\n"):
        write_errno(v / "control", bad + "\n")
        write_errno(p / "control", bad + "\n")
    for call in (lambda: os.rename(p / "status.xml", p / "x"),
                 lambda: os.rename(p / "config.xml", mounted.pools / "elsewhere"),
                 lambda: os.symlink("/etc", p / "volumes" / "link"),
                 lambda: os.mknod(p / "volumes" / "node"),
                 lambda: os.truncate(p / "status.xml", 0),
                 lambda: os.link(p / "config.xml", p / "hard"),
                 lambda: os.mkdir(mounted.mnt / "volumes" / "by-key" / "x"),
                 lambda: os.mkdir(mounted.mnt / "newtop"),
                 lambda: os.rmdir(mounted.pools / "by-uuid"),
                 lambda: os.rmdir(mounted.mnt / "volumes")):
        try:
            call()
        except OSError:
            pass
    assert mounted.proc.poll() is None, "storagefs died"
    assert read(p / "state") == "running\n"
    assert (mounted.images / "disk1").is_file()
    assert {"README", "pools", "volumes"} <= ls_names(mounted.mnt)
    assert "newtop" not in ls_names(mounted.mnt)
    assert subprocess.run(["ls", "-lR", str(mounted.mnt)], capture_output=True).returncode == 0
