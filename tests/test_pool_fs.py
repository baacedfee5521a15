"""Issue 6: `fs` pools (a filesystem on a block device, mounted on the target),
on a real mount with loop devices made by the test."""

from __future__ import annotations

import errno
import os
import time

import pytest
from loopdev import LoopSet, blkid, findmnt, skip_reason
from mount_helpers import (
    assert_one_error_line,
    assert_same_structure,
    assert_valid,
    command,
    conformance,
    ls_names,
    qemu_info,
    read,
    read_bytes,
    run,
    volume_xml,
    write,
    write_errno,
    xml_value,
)

MiB = 1024**2


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("mkfs.ext4", "mount", "umount", "findmnt", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def fs_pool_xml(name: str, device: str, fmt: str, target) -> str:
    return (f"<pool type='fs'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <format type='{fmt}'/>\n  </source>\n"
            f"  <target>\n    <path>{target}</path>\n  </target>\n</pool>\n")


def define(m, name: str, device: str, fmt: str, target):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", fs_pool_xml(name, device, fmt, target))
    return pdir


def state(pdir) -> str:
    return read(pdir / "state").strip()


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_fs_pool_build_start_volumes_restart_stop_delete(mounted, loops, tmp_path):
    dev = loops.make("64M")
    target = tmp_path / "fsmnt"
    p = define(mounted, "fsp", dev.path, "ext4", target)
    assert "build" in read(p / "control").split("\n")

    command(p / "control", "build")
    made = blkid(dev.path)
    assert made.get("TYPE") == "ext4", made
    assert target.is_dir()

    # a plain build never destroys: the filesystem is refused, with the reason
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert dev.path in line and "ext4" in line and "overwrite" in line, line
    assert blkid(dev.path).get("UUID") == made.get("UUID")

    command(p / "state", "running")
    assert state(p) == "running"
    assert findmnt(target) == {"SOURCE": dev.path, "FSTYPE": "ext4"}
    status = read_bytes(p / "status.xml")
    assert_same_structure(status, conformance("virsh-9.0", "storage", "pool-fs.xml"))
    assert_valid(status, "storagepool")
    assert xml_value(status, "/pool/source/device/@path") == dev.path
    assert xml_value(status, "/pool/source/format/@type") == "ext4"
    vfs = os.statvfs(target)
    assert int(read(p / "capacity")) == vfs.f_frsize * vfs.f_blocks
    assert 0 < int(read(p / "available")) <= int(read(p / "capacity"))

    # volumes are files on the mounted filesystem
    os.mkdir(p / "volumes" / "a.qcow2")
    write(p / "volumes" / "a.qcow2" / "config.xml", volume_xml("a.qcow2", 2048 * MiB, "qcow2"))
    img = target / "a.qcow2"
    assert os.stat(img).st_dev == os.stat(target).st_dev
    assert qemu_info(img)["format"] == "qcow2" and qemu_info(img)["virtual-size"] == 2048 * MiB
    assert os.readlink(p / "volumes" / "a.qcow2" / "path") == str(img)
    # a file made outside storagefs shows up without a refresh (the mount is watched)
    (target / "b.img").write_bytes(b"x" * 8192)
    assert wait_for(lambda: "b.img" in ls_names(p / "volumes")), ls_names(p / "volumes")

    # storagefs restarts: the pool is found mounted and stays running
    mounted.remount()
    assert state(p) == "running"
    assert findmnt(target) == {"SOURCE": dev.path, "FSTYPE": "ext4"}
    assert {"a.qcow2", "b.img"} <= ls_names(p / "volumes")

    # stop is refused while a file on the filesystem is open, with the reason
    fd = os.open(target / "b.img", os.O_RDONLY)
    try:
        code, call = write_errno(p / "state", "inactive\n")
        assert (code, call) == (errno.EBUSY, "write")
        line = assert_one_error_line(p)
        assert "busy" in line and str(target) in line, line
        assert state(p) == "running" and findmnt(target) is not None
    finally:
        os.close(fd)

    command(p / "state", "inactive")
    assert state(p) == "inactive"
    assert findmnt(target) is None
    assert not (target / "a.qcow2").exists()  # the files live on the device
    assert ls_names(p / "volumes") == set()

    command(p / "state", "running")
    assert {"a.qcow2", "b.img"} <= ls_names(p / "volumes")
    command(p / "state", "inactive")
    command(p / "control", "delete")
    assert not target.exists()
    assert blkid(dev.path).get("TYPE") == "ext4"  # delete removes the target, not the data


def test_fs_plain_build_refuses_a_foreign_filesystem_and_overwrite_replaces_it(
        mounted, loops, tmp_path):
    if skip_reason("mkfs.xfs"):
        pytest.skip(skip_reason("mkfs.xfs"))
    dev = loops.make("512M")
    run(["mkfs.ext4", "-q", dev.path])
    before = blkid(dev.path)
    target = tmp_path / "xfsmnt"
    p = define(mounted, "xp", dev.path, "xfs", target)

    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert "ext4" in line and "'xfs'" in line and "overwrite" in line, line
    assert blkid(dev.path) == before  # nothing touched
    assert not target.exists()

    # starting it as xfs is refused too: the device holds ext4
    code, _ = write_errno(p / "state", "running\n")
    assert code is not None and state(p) == "inactive"

    command(p / "control", "build overwrite")
    assert blkid(dev.path).get("TYPE") == "xfs"
    command(p / "state", "running")
    assert findmnt(target) == {"SOURCE": dev.path, "FSTYPE": "xfs"}
    os.mkdir(p / "volumes" / "v1")
    assert (target / "v1").is_file()
    command(p / "state", "inactive")
    assert findmnt(target) is None


@pytest.mark.log_allows("storage became inaccessible")
def test_fs_auto_mounts_what_is_there_and_lost_storage_makes_the_pool_inaccessible(
        mounted, loops, tmp_path):
    if skip_reason("mkfs.btrfs"):
        pytest.skip(skip_reason("mkfs.btrfs"))
    dev = loops.make("256M")
    run(["mkfs.btrfs", "-q", "-f", dev.path])
    target = tmp_path / "auto"
    target.mkdir()
    p = define(mounted, "ap", dev.path, "auto", target)

    # a plain build of an 'auto' pool on a device with a filesystem is refused
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    assert "btrfs" in assert_one_error_line(p)

    command(p / "state", "running")
    assert findmnt(target) == {"SOURCE": dev.path, "FSTYPE": "btrfs"}
    os.mkdir(p / "volumes" / "v1")
    assert (target / "v1").is_file()

    # unmounted behind storagefs's back: refresh fails and the pool is inaccessible
    run(["umount", target])
    code, call = write_errno(p / "control", "refresh\n")
    assert (code, call) == (errno.ENOENT, "write")
    assert state(p) == "inaccessible"
    line = assert_one_error_line(p)
    assert "not mounted" in line and dev.path in line, line
    assert ls_names(p / "volumes") == set()
    assert "pools" in read(mounted.mnt / "README")  # the mount itself stays up

    # mounted again: a refresh brings the pool back
    run(["mount", dev.path, target])
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert "v1" in ls_names(p / "volumes")

    # the loop device is detached while mounted: the kernel keeps it until unmounted
    run(["losetup", "-d", dev.path])
    command(p / "control", "refresh")
    assert state(p) == "running"
    command(p / "state", "inactive")
    sysfs = f"/sys/block/{dev.name}/size"
    assert wait_for(lambda: read(sysfs).strip() == "0"), "loop device still attached"
    code, call = write_errno(p / "state", "running\n")
    assert (code, call) == (errno.ENOENT, "write")
    assert dev.path in assert_one_error_line(p)
    assert state(p) == "inactive"
