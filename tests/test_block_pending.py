"""Issue 10 item 10: block pools never fail a mkdir for a default the user did not choose.

In disk and logical pools whose XML sets no <storagefs:volume-defaults capacity=...>,
mkdir makes a pending volume directory holding only config.xml (as a pending pool
does); the first accepted volume document creates the partition or LV; rmdir of a
pending volume removes it. On a real mount with 256 MiB loop devices made by the test.
"""

from __future__ import annotations

import errno
import os
import uuid

import pytest
from loopdev import LoopSet, lvm_json, parted_print, skip_reason
from mount_helpers import (
    STORAGEFS_POOL_NS,
    MiB,
    assert_one_error_line,
    command,
    ls_names,
    read,
    run,
    sh,
    write,
    write_errno,
)


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("parted", "wipefs", "pvcreate", "vgcreate", "lvcreate", "lvs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def disk_pool(name: str, device: str, defaults: str = "") -> str:
    return (f"<pool type='disk'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <format type='gpt'/>\n  </source>\n"
            f"  <target>\n    <path>/dev</path>\n  </target>\n{defaults}</pool>\n")


def logical_pool(name: str, vg: str, device: str) -> str:
    return (f"<pool type='logical'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <name>{vg}</name>\n"
            f"    <format type='lvm2'/>\n  </source>\n"
            f"  <target>\n    <path>/dev/{vg}</path>\n  </target>\n</pool>\n")


def block_doc(name: str, capacity: int) -> str:
    return (f"<volume type='block'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n</volume>\n")


def started(m, name: str, xml: str):
    p = m.pool(name)
    os.mkdir(p)
    write(p / "config.xml", xml)
    command(p / "control", "build")
    command(p / "state", "running")
    return p


def partitions(dev) -> dict[int, int]:
    return {n: size for n, _start, size in parted_print(dev.path)[1]}


def flags(dev, number: int) -> str:
    """The flags field of partition ``number`` (parted -m)."""
    out = run(["parted", "-m", "-s", dev.path, "unit", "B", "print"]).stdout
    for line in out.splitlines():
        fields = line.rstrip(";").split(":")
        if fields[0] == str(number):
            return fields[6] if len(fields) > 6 else ""
    raise AssertionError(f"no partition {number} on {dev.path}")


def typed_doc(name: str, capacity: int, fmt: str) -> str:
    return (f"<volume type='block'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n"
            f"  <target>\n    <format type='{fmt}'/>\n  </target>\n</volume>\n")


def lvs(vg: str) -> dict[str, int]:
    rows = lvm_json(["lvs", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", vg], "lv")
    return {r["lv_name"]: int(r["lv_size"]) for r in rows}


def mkdir_errno(path) -> int | None:
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    return None


def test_disk_pool_mkdir_makes_a_pending_volume_its_document_creates(mounted, loops):
    dev = loops.make("256M")
    p = started(mounted, "dp", disk_pool("dp", dev.path))
    first, second = f"{dev.name}p1", f"{dev.name}p2"
    v = p / "volumes" / first
    os.mkdir(v)  # no 1 GiB default: not ENOSPC
    assert ls_names(p / "volumes") == {first}
    assert os.listdir(v) == ["config.xml"]
    assert read(v / "config.xml") == ""
    assert partitions(dev) == {}
    assert not os.path.exists(v / "status.xml")
    assert os.listdir(mounted.mnt / "volumes" / "by-key") == []

    # too big for the disk: refused, still pending, and the error shows
    code, call = write_errno(v / "config.xml", block_doc(first, 300 * MiB))
    assert (code, call) == (errno.ENOSPC, "write")
    assert "300" in assert_one_error_line(v) or "free" in read(v / "error")
    assert sorted(os.listdir(v)) == ["config.xml", "error"]
    assert read(v / "config.xml") == ""
    assert partitions(dev) == {}

    # the first accepted document makes the partition, in the write
    text = block_doc(first, 16 * MiB)
    sh(f"cat > {v / 'config.xml'} <<'EOF'\n{text}EOF\ntest -e /dev/{first}")
    assert partitions(dev) == {1: 16 * MiB}
    assert read(v / "config.xml") == text
    assert int(read(v / "capacity")) == 16 * MiB
    assert {"status.xml", "path", "control"} <= set(os.listdir(v))
    assert os.readlink(v / "path") == f"/dev/{first}"
    assert len(os.listdir(mounted.mnt / "volumes" / "by-key")) == 1
    # from now on the usual rules: a larger document grows it
    write(v / "config.xml", block_doc(first, 24 * MiB))
    assert partitions(dev) == {1: 24 * MiB}

    # rmdir of a pending volume removes it and touches no partition
    os.mkdir(p / "volumes" / second)
    assert ls_names(p / "volumes") == {first, second}
    os.rmdir(p / "volumes" / second)
    assert ls_names(p / "volumes") == {first}
    assert partitions(dev) == {1: 24 * MiB}

    # a name that can never be a partition of this disk is refused at mkdir
    assert mkdir_errno(p / "volumes" / "data") == errno.EINVAL
    assert "data" in assert_one_error_line(p)

    # the one-line create makes a partition at once
    command(p / "control", f"create {second} 8M")
    assert partitions(dev) == {1: 24 * MiB, 2: 8 * MiB}

    # pending volumes are not kept: nothing of them is on the disk (as pending pools)
    third = f"{dev.name}p3"
    os.mkdir(p / "volumes" / third)
    mounted.remount()
    assert ls_names(p / "volumes") == {first, second}
    os.mkdir(p / "volumes" / third)
    command(p / "state", "inactive")
    command(p / "state", "running")
    assert ls_names(p / "volumes") == {first, second}
    assert partitions(dev) == {1: 24 * MiB, 2: 8 * MiB}


def test_disk_pool_with_a_default_capacity_makes_the_partition_at_mkdir(mounted, loops):
    dev = loops.make("256M")
    defaults = (f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_POOL_NS}'"
                " capacity='32M'/>\n")
    p = started(mounted, "dp", disk_pool("dp", dev.path, defaults))
    v = p / "volumes" / f"{dev.name}p1"
    os.mkdir(v)
    assert partitions(dev) == {1: 32 * MiB}
    assert "status.xml" in os.listdir(v)
    # a default the user chose is used, and refused when it does not fit
    defaults = defaults.replace("32M", "1G")
    write(p / "config.xml", disk_pool("dp", dev.path, defaults))
    assert mkdir_errno(p / "volumes" / f"{dev.name}p2") == errno.ENOSPC
    assert set(partitions(dev)) == {1}


def test_disk_volume_document_is_never_half_applied(mounted, loops):
    dev = loops.make("256M")
    p = started(mounted, "dp", disk_pool("dp", dev.path))
    name = f"{dev.name}p1"
    v = p / "volumes" / name
    os.mkdir(v)
    write(v / "config.xml", block_doc(name, 16 * MiB))
    config = read(v / "config.xml")
    # a new type flag with a smaller capacity: refused, and the flag is not set
    code, call = write_errno(v / "config.xml", typed_doc(name, 8 * MiB, "linux-lvm"))
    assert (code, call) == (errno.EINVAL, "write")
    assert "shrink" in assert_one_error_line(v)
    assert "lvm" not in flags(dev, 1)
    # nor with a capacity that does not fit
    code, call = write_errno(v / "config.xml", typed_doc(name, 400 * MiB, "linux-lvm"))
    assert (code, call) == (errno.ENOSPC, "write")
    assert "lvm" not in flags(dev, 1)
    assert partitions(dev) == {1: 16 * MiB}
    assert read(v / "config.xml") == config
    write(v / "config.xml", typed_doc(name, 20 * MiB, "linux-lvm"))
    assert "lvm" in flags(dev, 1)
    assert partitions(dev) == {1: 20 * MiB}


def test_logical_pool_mkdir_makes_a_pending_volume_its_document_creates(mounted, loops):
    dev = loops.make("256M")
    vg = f"sfs_{uuid.uuid4().hex[:10]}"
    p = started(mounted, "lp", logical_pool("lp", vg, dev.path))
    v = p / "volumes" / "lv1"
    os.mkdir(v)
    assert os.listdir(v) == ["config.xml"]
    assert lvs(vg) == {}
    write(v / "config.xml", block_doc("lv1", 20 * MiB))
    assert lvs(vg) == {"lv1": 20 * MiB}
    assert int(read(v / "capacity")) == 20 * MiB
    assert "status.xml" in os.listdir(v)
    # rmdir of a pending LV, and an LVM name refused at mkdir
    os.mkdir(p / "volumes" / "lv2")
    os.rmdir(p / "volumes" / "lv2")
    assert ls_names(p / "volumes") == {"lv1"}
    assert mkdir_errno(p / "volumes" / "bad:name") == errno.EINVAL
    assert lvs(vg) == {"lv1": 20 * MiB}
    # rmdir of the created one removes the LV
    os.rmdir(v)
    assert lvs(vg) == {}
    assert ls_names(p / "volumes") == set()
