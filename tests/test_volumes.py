"""Issue 3 section 5: volumes in a dir pool, on a real mount."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time

import pytest
from mount_helpers import (
    GiB,
    MiB,
    assert_one_error_line,
    assert_same_structure,
    assert_valid,
    command,
    conformance,
    define_pool,
    escape_path,
    ls_names,
    qemu_info,
    read,
    run,
    volume_defaults_el,
    volume_xml,
    write,
    write_errno,
    xml_value,
)


def _by_key_links_to(m, vol, pool="default"):
    want = f"../../pools/{pool}/volumes/{vol}"
    d = m.mnt / "volumes" / "by-key"
    return [n for n in os.listdir(d) if os.readlink(d / n) == want]


def test_mkdir_volume_creates_sparse_raw_1gib_file(mounted):
    os.mkdir(mounted.vol("disk1"))
    real = mounted.images / "disk1"
    assert real.is_file()
    info = qemu_info(real)
    assert info["format"] == "raw"
    assert info["virtual-size"] == GiB
    assert os.stat(real).st_blocks * 512 < MiB, "a default volume must be sparse"
    v = mounted.vol("disk1")
    assert read(v / "format") == "raw\n"
    assert read(v / "capacity") == f"{GiB}\n"


@pytest.mark.parametrize(
    "name,fmt",
    [("d.qcow2", "qcow2"), ("d.vmdk", "vmdk"), ("d.vdi", "vdi"), ("d.vhd", "vpc"),
     ("d.raw", "raw"), ("d.img", "raw")],
)
def test_volume_name_suffix_implies_format(mounted, name, fmt):
    os.mkdir(mounted.vol(name))
    info = qemu_info(mounted.images / name)
    assert info["format"] == fmt
    assert info["virtual-size"] == GiB


def test_pool_volume_defaults_set_format_and_capacity(mounted, tmp_path):
    p = define_pool(mounted, "q", tmp_path / "q", extra=volume_defaults_el("qcow2", "10G"))
    os.mkdir(p / "volumes" / "v1")
    info = qemu_info(tmp_path / "q" / "v1")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 10 * GiB
    assert read(p / "volumes" / "v1" / "format") == "qcow2\n"
    assert read(p / "volumes" / "v1" / "capacity") == f"{10 * GiB}\n"


@pytest.mark.parametrize("name", ["v.raw", "v.img"])
def test_raw_name_suffix_overrides_pool_default_format(mounted, tmp_path, name):
    p = define_pool(mounted, "q", tmp_path / "q", extra=volume_defaults_el("qcow2", "10G"))
    os.mkdir(p / "volumes" / name)
    info = qemu_info(tmp_path / "q" / name)
    assert info["format"] == "raw"
    assert info["virtual-size"] == 10 * GiB


def test_path_is_symlink_to_real_file_outside_fuse(mounted):
    os.mkdir(mounted.vol("disk1"))
    link = mounted.vol("disk1") / "path"
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    real = mounted.images / "disk1"
    assert os.readlink(link) == str(real)
    # guest data goes to the real file, not through FUSE
    with open(link, "r+b") as f:
        f.write(b"guest data")
    assert real.read_bytes()[:10] == b"guest data"
    assert not os.path.realpath(link).startswith(str(mounted.mnt))


def test_volume_value_files_match_status_xml(mounted):
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    status = read(v / "status.xml")
    real = str(mounted.images / "disk1")
    assert read(v / "key") == f"{xml_value(status, '/volume/key')}\n"
    assert xml_value(status, "/volume/key") == real
    assert xml_value(status, "/volume/target/path") == real
    assert read(v / "capacity") == f"{xml_value(status, '/volume/capacity')}\n"
    assert read(v / "allocation") == f"{xml_value(status, '/volume/allocation')}\n"
    assert read(v / "format") == f"{xml_value(status, '/volume/target/format/@type')}\n"
    st = os.stat(real)
    assert int(xml_value(status, "/volume/allocation")) == st.st_blocks * 512
    assert int(xml_value(status, "/volume/physical")) == st.st_size


def test_volume_status_xml_reads_like_virsh_vol_dumpxml(mounted):
    os.mkdir(mounted.vol("disk1"))
    status = read(mounted.vol("disk1") / "status.xml")
    assert_same_structure(status, conformance("virsh-9.0", "storage", "vol-raw.xml"))
    assert_valid(status, "storagevol")
    st = os.stat(mounted.images / "disk1")
    assert int(xml_value(status, "/volume/target/permissions/mode"), 8) == stat.S_IMODE(st.st_mode)


def test_qcow2_volume_status_xml_reads_like_virsh(mounted):
    os.mkdir(mounted.vol("q.qcow2"))
    status = read(mounted.vol("q.qcow2") / "status.xml")
    assert_same_structure(status, conformance("virsh-9.0", "storage", "vol-qcow2.xml"))
    assert_valid(status, "storagevol")
    assert xml_value(status, "/volume/capacity") == str(GiB)


def test_volume_by_key_and_by_path_links(mounted):
    os.mkdir(mounted.vol("disk1"))
    links = _by_key_links_to(mounted, "disk1")
    assert len(links) == 1, os.listdir(mounted.mnt / "volumes" / "by-key")
    key = read(mounted.vol("disk1") / "key").strip()
    assert read(mounted.mnt / "volumes" / "by-key" / links[0] / "key").strip() == key
    name = escape_path(mounted.images / "disk1")
    by_path = mounted.mnt / "volumes" / "by-path" / name
    assert os.readlink(by_path) == "../../pools/default/volumes/disk1"
    assert read(by_path / "format") == "raw\n"


def test_writing_volume_xml_reads_back_byte_for_byte(mounted):
    os.mkdir(mounted.vol("disk1"))
    doc = volume_xml("disk1", 2 * GiB)
    write(mounted.vol("disk1") / "config.xml", doc)
    assert read(mounted.vol("disk1") / "config.xml") == doc


def test_writing_larger_capacity_resizes(mounted):
    os.mkdir(mounted.vol("disk1"))
    write(mounted.vol("disk1") / "config.xml", volume_xml("disk1", 3 * GiB))
    assert qemu_info(mounted.images / "disk1")["virtual-size"] == 3 * GiB
    assert read(mounted.vol("disk1") / "capacity") == f"{3 * GiB}\n"


def test_writing_larger_capacity_resizes_qcow2(mounted):
    os.mkdir(mounted.vol("q.qcow2"))
    write(mounted.vol("q.qcow2") / "config.xml", volume_xml("q.qcow2", 2 * GiB, fmt="qcow2"))
    info = qemu_info(mounted.images / "q.qcow2")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 2 * GiB)


def test_writing_smaller_capacity_is_refused_and_keeps_size(mounted):
    os.mkdir(mounted.vol("disk1"))
    # once it has held data (issue 10 item 9: before that, a document re-makes it)
    with open(mounted.vol("disk1") / "path", "r+b") as f:
        f.write(b"data")
    code, call = write_errno(mounted.vol("disk1") / "config.xml", volume_xml("disk1", GiB // 2))
    assert call == "write" and code in (errno.EINVAL, errno.EBUSY, errno.ENOTSUP), code
    assert qemu_info(mounted.images / "disk1")["virtual-size"] == GiB
    assert_one_error_line(mounted.vol("disk1"))


def test_control_resize_grows_volume(mounted):
    os.mkdir(mounted.vol("disk1"))
    command(mounted.vol("disk1") / "control", "resize 2G")
    assert qemu_info(mounted.images / "disk1")["virtual-size"] == 2 * GiB


def test_format_change_allowed_while_volume_holds_no_data(mounted):
    os.mkdir(mounted.vol("disk1"))
    write(mounted.vol("disk1") / "config.xml", volume_xml("disk1", GiB, fmt="qcow2"))
    info = qemu_info(mounted.images / "disk1")
    assert (info["format"], info["virtual-size"]) == ("qcow2", GiB)
    assert read(mounted.vol("disk1") / "format") == "qcow2\n"


def test_format_change_refused_with_ebusy_when_volume_holds_data(mounted):
    os.mkdir(mounted.vol("disk1"))
    real = mounted.images / "disk1"
    with open(mounted.vol("disk1") / "path", "r+b") as f:
        f.write(b"precious" * 512)
        os.fsync(f.fileno())
    before = read(mounted.vol("disk1") / "config.xml")
    code, call = write_errno(mounted.vol("disk1") / "config.xml",
                             volume_xml("disk1", GiB, fmt="qcow2"))
    assert (code, call) == (errno.EBUSY, "write")
    assert qemu_info(real)["format"] == "raw"
    assert real.read_bytes()[:8] == b"precious"
    assert read(mounted.vol("disk1") / "config.xml") == before
    assert_one_error_line(mounted.vol("disk1"))


def test_allocation_equal_to_capacity_preallocates(mounted):
    os.mkdir(mounted.vol("disk1"))
    cap = GiB  # the default capacity: only the allocation changes
    write(mounted.vol("disk1") / "config.xml", volume_xml("disk1", cap, allocation=cap))
    st = os.stat(mounted.images / "disk1")
    assert st.st_size == cap
    assert st.st_blocks * 512 >= cap
    assert int(read(mounted.vol("disk1") / "allocation")) >= cap


def test_permissions_element_sets_mode_and_owner(mounted):
    os.mkdir(mounted.vol("disk1"))
    write(mounted.vol("disk1") / "config.xml",
          volume_xml("disk1", GiB, permissions=("0640", 65534, 65534)))
    st = os.stat(mounted.images / "disk1")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    status = read(mounted.vol("disk1") / "status.xml")
    assert xml_value(status, "/volume/target/permissions/mode") == "0640"
    assert xml_value(status, "/volume/target/permissions/owner") == "65534"


def test_rmdir_volume_destroys_file_and_links(mounted):
    os.mkdir(mounted.vol("disk1"))
    os.rmdir(mounted.vol("disk1"))
    assert not (mounted.images / "disk1").exists()
    assert "disk1" not in ls_names(mounted.pool() / "volumes")
    assert not _by_key_links_to(mounted, "disk1")
    assert not os.listdir(mounted.mnt / "volumes" / "by-path")


def test_file_made_by_other_program_appears_after_refresh(mounted):
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(mounted.images / "ext.qcow2"), "2G"])
    command(mounted.pool() / "control", "refresh")
    assert "ext.qcow2" in ls_names(mounted.pool() / "volumes")
    v = mounted.vol("ext.qcow2")
    assert read(v / "format") == "qcow2\n"
    assert read(v / "capacity") == f"{2 * GiB}\n"
    assert os.readlink(v / "path") == str(mounted.images / "ext.qcow2")


def test_file_removed_by_other_program_disappears_after_refresh(mounted):
    os.mkdir(mounted.vol("disk1"))
    os.unlink(mounted.images / "disk1")
    command(mounted.pool() / "control", "refresh")
    assert "disk1" not in ls_names(mounted.pool() / "volumes")
    with pytest.raises(FileNotFoundError):
        os.stat(mounted.vol("disk1"))
    assert not _by_key_links_to(mounted, "disk1")


def test_volume_listing_has_no_vanished_file(mounted):
    os.mkdir(mounted.vol("disk1"))
    os.mkdir(mounted.vol("disk2"))
    os.unlink(mounted.images / "disk1")
    command(mounted.pool() / "control", "refresh")
    out = run(["ls", "-l", str(mounted.pool() / "volumes")]).stdout
    assert "disk1" not in out and "disk2" in out


def test_volume_config_written_back_unchanged_is_a_noop(mounted):
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    doc = read(v / "config.xml")
    mtime = os.stat(v / "config.xml").st_mtime_ns
    before = os.stat(mounted.images / "disk1")
    write(v / "config.xml", doc)
    assert read(v / "config.xml") == doc
    assert os.stat(v / "config.xml").st_mtime_ns == mtime
    after = os.stat(mounted.images / "disk1")
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)


def test_volume_in_second_pool_lands_in_its_target(mounted, tmp_path):
    p = define_pool(mounted, "p1", tmp_path / "p1")
    os.mkdir(p / "volumes" / "v.qcow2")
    assert qemu_info(tmp_path / "p1" / "v.qcow2")["format"] == "qcow2"
    assert not (mounted.images / "v.qcow2").exists()
    name = escape_path(tmp_path / "p1" / "v.qcow2")
    link = mounted.mnt / "volumes" / "by-path" / name
    assert os.readlink(link) == "../../pools/p1/volumes/v.qcow2"


def test_volumes_of_inactive_pool_are_not_listed(mounted, tmp_path):
    p = define_pool(mounted, "p1", tmp_path / "p1")
    os.mkdir(p / "volumes" / "v1")
    command(p / "state", "inactive")
    assert ls_names(p / "volumes") == set()
    with pytest.raises(OSError) as exc:
        os.mkdir(p / "volumes" / "v2")
    assert exc.value.errno == errno.EBUSY
    assert not (tmp_path / "p1" / "v2").exists()


def test_qemu_img_check_passes_on_created_qcow2(mounted):
    os.mkdir(mounted.vol("q.qcow2"))
    res = subprocess.run(["qemu-img", "check", str(mounted.images / "q.qcow2")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def until(predicate, seconds: float = 3.0) -> bool:
    """Poll predicate until it holds or ``seconds`` pass (for figures SPEC lets lag)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_allocation_follows_guest_writes_within_a_second(mounted):
    """SPEC "Generated files tell the truth": figures that move with guest I/O may lag
    by at most 1 s (a writer that keeps the file open, as a guest does, included)."""
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    assert int(read(v / "allocation")) < MiB
    with open(v / "path", "r+b") as f:
        f.write(os.urandom(4 * MiB))
        f.flush()
        os.fsync(f.fileno())
        # still open: only IN_MODIFY tells
        assert until(lambda: int(read(v / "allocation")) >= 4 * MiB), read(v / "allocation")
    text = read(v / "allocation")
    assert int(text) >= 4 * MiB
    assert os.stat(v / "allocation").st_size == len(text)
    assert int(xml_value(read(v / "status.xml"), "/volume/allocation")) >= 4 * MiB


def test_format_change_qcow2_to_raw_while_empty(mounted):
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    write(v / "config.xml", volume_xml("disk1", GiB, fmt="qcow2"))
    write(v / "config.xml", volume_xml("disk1", GiB, fmt="raw"))
    info = qemu_info(mounted.images / "disk1")
    assert (info["format"], info["virtual-size"]) == ("raw", GiB)
