"""Issue 6: `logical` pools (an LVM volume group, logical volumes are volumes), on
a real mount with loop devices made by the test.

This kernel has no device-mapper: no logical volume can be activated and no
/dev/VG/LV node ever appears. Everything else is tested here; activation is
covered only as "the pool starts, degraded, and says why".
"""

from __future__ import annotations

import errno
import os
import uuid

import pytest
from loopdev import LoopSet, blkid, host, lvm_json, skip_reason
from mount_helpers import (
    STORAGEFS_POOL_NS,
    assert_one_error_line,
    assert_same_structure,
    assert_valid,
    command,
    conformance,
    ls_names,
    read,
    read_bytes,
    run,
    write,
    write_errno,
    xml_value,
)

MiB = 1024**2
#: the kernel's word (libdevmapper makes /dev/mapper/control even where it is absent)
DM_PRESENT = os.path.exists("/sys/class/misc/device-mapper")
#: the manager turns a backend's degraded_reason() into state 'degraded' (lead's change)
@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("pvcreate", "vgcreate", "lvcreate", "lvs", "vgs", "pvs", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


@pytest.fixture
def vg():
    return f"sfs_{uuid.uuid4().hex[:10]}"


def logical_pool_xml(name: str, vg: str, devices: list[str], capacity: str = "16M") -> str:
    devs = "".join(f"    <device path='{d}'/>\n" for d in devices)
    return (f"<pool type='logical'>\n  <name>{name}</name>\n  <source>\n{devs}"
            f"    <name>{vg}</name>\n    <format type='lvm2'/>\n  </source>\n"
            f"  <target>\n    <path>/dev/{vg}</path>\n  </target>\n"
            f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_POOL_NS}'"
            f" capacity='{capacity}'/>\n</pool>\n")


def volume_doc(name: str, capacity: int) -> str:
    return (f"<volume type='block'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n</volume>\n")


def define(m, name: str, vg: str, devices: list[str]):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", logical_pool_xml(name, vg, devices))
    return pdir


def state(pdir) -> str:
    return read(pdir / "state").strip()


def lvs(vg: str) -> dict[str, dict]:
    rows = lvm_json(["lvs", "--units", "b", "--nosuffix", "-o", "lv_name,lv_uuid,lv_size", vg],
                    "lv")
    return {r["lv_name"]: r for r in rows}


def vgs(vg: str) -> dict | None:
    rows = lvm_json(["vgs", "--units", "b", "--nosuffix", "-o", "vg_name,vg_size,vg_free", vg],
                    "vg")
    return rows[0] if rows else None


def pv_vg(device: str) -> str | None:
    for row in lvm_json(["pvs", "-o", "pv_name,vg_name"], "pv"):
        if row.get("pv_name") == device:
            return row.get("vg_name")
    return None


def size(vg: str, lv: str) -> int:
    return int(lvs(vg)[lv]["lv_size"])


def mkdir_errno(path):
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    return None


def test_logical_pool_build_volumes_resize_delete(mounted, loops, vg):
    dev = loops.make("128M")
    p = define(mounted, "lp", vg, [dev.path])
    command(p / "control", "build")
    assert pv_vg(dev.path) == vg
    assert blkid(dev.path).get("TYPE") == "LVM2_member"

    # a plain build never writes over a PV
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert dev.path in line and "LVM2_member" in line and "overwrite" in line, line

    command(p / "state", "running")
    assert state(p) in ("running", "degraded")
    status = read_bytes(p / "status.xml")
    assert_same_structure(status, conformance("virsh-9.0", "storage", "pool-logical.xml"))
    assert_valid(status, "storagepool")
    info = vgs(vg)
    assert int(read(p / "capacity")) == int(info["vg_size"])
    assert int(read(p / "available")) == int(info["vg_free"])
    assert int(read(p / "allocation")) == 0

    # mkdir makes an LV of the pool's default capacity
    os.mkdir(p / "volumes" / "lv1")
    vol = p / "volumes" / "lv1"
    assert size(vg, "lv1") == 16 * MiB
    assert os.readlink(vol / "path") == f"/dev/{vg}/lv1"
    key = read(vol / "key").strip()
    assert key == lvs(vg)["lv1"]["lv_uuid"]
    assert os.readlink(mounted.mnt / "volumes" / "by-key" / key) == "../../pools/lp/volumes/lv1"
    assert xml_value(read_bytes(vol / "status.xml"), "/volume/target/path") == f"/dev/{vg}/lv1"
    assert int(read(p / "allocation")) == 16 * MiB

    # a bigger capacity in the volume XML grows the LV; resize grows and shrinks it
    write(vol / "config.xml", volume_doc("lv1", 24 * MiB))
    assert size(vg, "lv1") == 24 * MiB
    command(vol / "control", "resize 32M")
    assert size(vg, "lv1") == 32 * MiB and int(read(vol / "capacity")) == 32 * MiB
    code, call = write_errno(vol / "control", "resize 8M\n")
    assert (code, call) == (errno.EINVAL, "write")
    command(vol / "control", "resize --shrink 8M")
    assert size(vg, "lv1") == 8 * MiB
    code, call = write_errno(vol / "control", "resize 10G\n")
    assert (code, call) == (errno.ENOSPC, "write")
    assert "free space" in assert_one_error_line(vol).lower()
    assert size(vg, "lv1") == 8 * MiB
    assert int(read(p / "available")) == int(vgs(vg)["vg_free"])

    # LVM refuses names it cannot hold; nothing is made
    assert mkdir_errno(p / "volumes" / "bad name") == errno.EINVAL
    assert "invalid" in assert_one_error_line(p)
    assert set(lvs(vg)) == {"lv1"}

    # an LV made outside storagefs shows up after refresh
    outside = ["lvcreate", "-n", "ext", "-L", "8M", "--yes", vg]
    if not DM_PRESENT:
        outside[1:1] = ["--driverloaded", "n"]
    host(outside)
    command(p / "control", "refresh")
    assert ls_names(p / "volumes") == {"lv1", "ext"}

    os.rmdir(vol)
    assert set(lvs(vg)) == {"ext"}
    assert ls_names(p / "volumes") == {"ext"}

    command(p / "state", "inactive")
    assert ls_names(p / "volumes") == set()
    command(p / "state", "running")
    assert ls_names(p / "volumes") == {"ext"}

    # delete: the VG and the PV label go
    command(p / "state", "inactive")
    command(p / "control", "delete")
    assert vgs(vg) is None
    assert pv_vg(dev.path) is None
    assert "TYPE" not in blkid(dev.path)


def test_logical_plain_build_refuses_a_filesystem_overwrite_makes_the_vg(mounted, loops, vg):
    if skip_reason("mkfs.ext4"):
        pytest.skip(skip_reason("mkfs.ext4"))
    dev = loops.make("64M")
    run(["mkfs.ext4", "-q", dev.path])
    before = blkid(dev.path)
    p = define(mounted, "lp", vg, [dev.path])

    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert "ext4" in line and "LVM2_member" in line and "overwrite" in line, line
    assert blkid(dev.path) == before
    assert vgs(vg) is None

    # no VG yet: start says so
    code, _ = write_errno(p / "state", "running\n")
    assert code == errno.ENOENT and state(p) == "inactive"
    assert vg in assert_one_error_line(p)

    command(p / "control", "build overwrite")
    assert pv_vg(dev.path) == vg
    command(p / "state", "running")
    os.mkdir(p / "volumes" / "v")
    assert "v" in lvs(vg)


@pytest.mark.log_allows("storage became inaccessible")
def test_logical_pool_whose_device_vanishes_becomes_inaccessible(mounted, loops, vg):
    dev = loops.make("64M")
    p = define(mounted, "lp", vg, [dev.path])
    command(p / "control", "build")
    command(p / "state", "running")
    os.mkdir(p / "volumes" / "lv1")
    assert "lv1" in lvs(vg)

    run(["partx", "-d", dev.path], check=False)
    run(["losetup", "-d", dev.path])
    code, call = write_errno(p / "control", "refresh\n")
    assert code is not None and call == "write"
    assert state(p) == "inaccessible"
    line = assert_one_error_line(p)
    assert vg in line and dev.path in line, line
    assert ls_names(p / "volumes") == set()
    assert "pools" in read(mounted.mnt / "README")


@pytest.mark.skipif(DM_PRESENT, reason="device-mapper present: LVs can be activated here")
def test_logical_pool_without_device_mapper_runs_degraded_and_says_why(mounted, loops, vg):
    dev = loops.make("64M")
    p = define(mounted, "lp", vg, [dev.path])
    command(p / "control", "build")
    command(p / "state", "running")
    assert state(p) == "degraded"
    line = assert_one_error_line(p)
    assert "device-mapper" in line and vg in line, line
    # volumes still work: made with --driverloaded n, listed, their path link set
    os.mkdir(p / "volumes" / "lv1")
    assert os.readlink(p / "volumes" / "lv1" / "path") == f"/dev/{vg}/lv1"
    assert not os.path.exists(f"/dev/{vg}/lv1")
    command(p / "control", "refresh")
    assert state(p) == "degraded"
    # writing the state it is in changes nothing; stop works
    command(p / "state", "running")
    assert state(p) == "degraded"
    command(p / "state", "inactive")
    assert state(p) == "inactive"
