"""Issue 6: `disk` pools (a partitioned disk, partitions are volumes), on a real
mount with loop devices made by the test."""

from __future__ import annotations

import errno
import os

import pytest
from loopdev import LoopSet, blkid, parted_print, skip_reason
from mount_helpers import (
    STORAGEFS_POOL_NS,
    assert_one_error_line,
    assert_valid,
    command,
    ls_names,
    read,
    read_bytes,
    run,
    write,
    write_errno,
    xml_value,
)

MiB = 1024**2


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("parted", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def disk_pool_xml(name: str, device: str, fmt: str, capacity: str = "8M") -> str:
    return (f"<pool type='disk'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <format type='{fmt}'/>\n  </source>\n"
            f"  <target>\n    <path>/dev</path>\n  </target>\n"
            f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_POOL_NS}'"
            f" capacity='{capacity}'/>\n</pool>\n")


def volume_doc(name: str, capacity: int) -> str:
    return (f"<volume type='block'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n</volume>\n")


def define(m, name: str, device: str, fmt: str, **kw):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", disk_pool_xml(name, device, fmt, **kw))
    return pdir


def state(pdir) -> str:
    return read(pdir / "state").strip()


def parts(dev) -> dict[int, tuple[int, int]]:
    """number -> (start, size) from parted."""
    return {n: (start, size) for n, start, size in parted_print(dev.path)[1]}


@pytest.mark.log_allows("storage became inaccessible")
def test_disk_pool_gpt_partitions_are_volumes(mounted, loops):
    dev = loops.make("64M")
    p = define(mounted, "dp", dev.path, "gpt")
    command(p / "control", "build")
    assert parted_print(dev.path) == ("gpt", [])
    assert blkid(dev.path).get("PTTYPE") == "gpt"

    # a plain build never writes over a label
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert dev.path in line and "gpt" in line and "overwrite" in line, line

    command(p / "state", "running")
    assert state(p) == "running"
    capacity = int(read(p / "capacity"))
    assert 63 * MiB < capacity <= 64 * MiB
    assert int(read(p / "allocation")) == 0
    status = read_bytes(p / "status.xml")
    assert_valid(status, "storagepool")
    assert xml_value(status, "/pool/source/device/@path") == dev.path
    assert xml_value(status, "/pool/source/format/@type") == "gpt"

    # volumes are named as libvirt names partitions; another name is refused
    first = f"{dev.name}p1"
    code, call = write_errno_mkdir(p / "volumes" / "data")
    assert code == errno.EINVAL
    assert f"expected '{first}'" in assert_one_error_line(p)
    assert parts(dev) == {}

    os.mkdir(p / "volumes" / first)
    assert parts(dev) == {1: (1 * MiB, 8 * MiB)}
    vol = p / "volumes" / first
    node = f"/dev/{first}"
    assert os.readlink(vol / "path") == node
    assert read(vol / "key").strip() == node
    assert int(read(vol / "capacity")) == 8 * MiB
    assert os.path.exists(node)
    with open(node, "rb") as f:
        assert f.seek(0, os.SEEK_END) == 8 * MiB  # the kernel knows the partition
    assert xml_value(read_bytes(vol / "status.xml"), "/volume/@type") == "block"

    # a bigger capacity in the volume XML grows the partition into free space
    write(vol / "config.xml", volume_doc(first, 12 * MiB))
    assert parts(dev)[1] == (1 * MiB, 12 * MiB)
    with open(node, "rb") as f:
        assert f.seek(0, os.SEEK_END) == 12 * MiB

    second = f"{dev.name}p2"
    os.mkdir(p / "volumes" / second)
    start2 = parts(dev)[2][0]
    assert start2 >= 13 * MiB and start2 % MiB == 0

    # p1 cannot grow into p2
    code, call = write_errno(vol / "control", "resize 40M\n")
    assert (code, call) == (errno.ENOSPC, "write")
    assert "free space" in assert_one_error_line(vol)
    assert parts(dev)[1] == (1 * MiB, 12 * MiB)
    # shrinking needs --shrink; with it, the partition shrinks
    code, _ = write_errno(vol / "control", "resize 4M\n")
    assert code == errno.EINVAL
    command(vol / "control", "resize --shrink 4M")
    assert parts(dev)[1] == (1 * MiB, 4 * MiB)

    vol2 = p / "volumes" / second
    command(vol2 / "control", "resize 20M")
    assert parts(dev)[2] == (start2, 20 * MiB)
    assert int(read(p / "allocation")) == 24 * MiB
    assert int(read(p / "available")) < capacity - 24 * MiB + 2 * MiB

    # data on p2 survives changes to p1
    with open(f"/dev/{second}", "r+b") as f:
        f.write(b"storagefs" * 100)
    # a partition in use cannot be removed, and the table is left alone
    fd = os.open(f"/dev/{second}", os.O_RDONLY | os.O_EXCL)
    try:
        code, call = write_errno_rmdir(vol2)
        assert code == errno.EBUSY
        assert "in use" in assert_one_error_line(vol2)
        assert 2 in parts(dev)
    finally:
        os.close(fd)
    os.rmdir(vol)
    assert set(parts(dev)) == {2}
    assert not os.path.exists(node)
    assert ls_names(p / "volumes") == {second}
    with open(f"/dev/{second}", "rb") as f:
        assert f.read(9) == b"storagefs"

    # a partition made outside storagefs shows up after refresh
    run(["parted", "-s", dev.path, "unit", "MiB", "mkpart", "outside", "40", "48"])
    command(p / "control", "refresh")
    assert ls_names(p / "volumes") == {f"{dev.name}p1", second}
    assert int(read(p / "volumes" / f"{dev.name}p1" / "capacity")) == 8 * MiB

    # stop and start: the partitions are listed again
    command(p / "state", "inactive")
    assert ls_names(p / "volumes") == set()
    command(p / "state", "running")
    assert ls_names(p / "volumes") == {f"{dev.name}p1", second}

    # the disk goes away under the running pool: inaccessible, the mount stays
    run(["partx", "-d", dev.path])
    run(["losetup", "-d", dev.path])
    code, call = write_errno(p / "control", "refresh\n")
    assert code is not None and call == "write"
    assert state(p) == "inaccessible"
    assert dev.path in assert_one_error_line(p)
    assert ls_names(p / "volumes") == set()
    assert "pools" in read(mounted.mnt / "README")


def write_errno_mkdir(path):
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno, "mkdir"
    return None, None


def write_errno_rmdir(path):
    try:
        os.rmdir(path)
    except OSError as exc:
        return exc.errno, "rmdir"
    return None, None


def test_disk_plain_build_refuses_a_filesystem_overwrite_writes_the_label(mounted, loops):
    if skip_reason("mkfs.ext4"):
        pytest.skip(skip_reason("mkfs.ext4"))
    dev = loops.make("32M")
    run(["mkfs.ext4", "-q", dev.path])
    before = blkid(dev.path)
    p = define(mounted, "dp", dev.path, "gpt")

    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert "ext4" in line and "'gpt'" in line and "overwrite" in line, line
    assert blkid(dev.path) == before

    # nor does it start: the device has no label of the pool's format
    code, _ = write_errno(p / "state", "running\n")
    assert code == errno.EBUSY and state(p) == "inactive"

    command(p / "control", "build overwrite")
    found = blkid(dev.path)
    assert found.get("PTTYPE") == "gpt" and "TYPE" not in found, found
    command(p / "state", "running")
    assert ls_names(p / "volumes") == set()


def test_disk_dos_label_primary_extended_and_logical_partitions(mounted, loops):
    dev = loops.make("64M")
    p = define(mounted, "dos", dev.path, "dos", capacity="4M")
    command(p / "control", "build")
    assert parted_print(dev.path)[0] == "msdos"
    assert blkid(dev.path).get("PTTYPE") == "dos"
    command(p / "state", "running")

    for n in (1, 2, 3):
        os.mkdir(p / "volumes" / f"{dev.name}p{n}")
    assert sorted(parts(dev)) == [1, 2, 3]
    # the fourth slot taken by an extended partition made outside; refresh lists it
    run(["parted", "-s", dev.path, "unit", "MiB", "mkpart", "extended", "20", "60"])
    command(p / "control", "refresh")
    ext = p / "volumes" / f"{dev.name}p4"
    assert read(ext / "format").strip() == "extended"
    # with no primary slot left, the next volume is a logical partition (number 5)
    code, _ = write_errno_mkdir(p / "volumes" / f"{dev.name}p4x")
    assert code == errno.EINVAL
    assert f"expected '{dev.name}p5'" in assert_one_error_line(p)
    os.mkdir(p / "volumes" / f"{dev.name}p5")
    start, size = parts(dev)[5]
    assert 20 * MiB < start < 60 * MiB and size == 4 * MiB
    assert os.path.exists(f"/dev/{dev.name}p5")
    # the extended partition cannot go while it holds a logical one
    code, _ = write_errno_rmdir(ext)
    assert code == errno.EBUSY
    os.rmdir(p / "volumes" / f"{dev.name}p5")
    os.rmdir(ext)
    assert sorted(parts(dev)) == [1, 2, 3]
