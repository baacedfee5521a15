"""Volume formats, backing stores, qcow2 options and O(1) reflink clones (issue 4)."""

from __future__ import annotations

import os
import subprocess

import pytest
from mount_helpers import GiB, MiB, parse, pool_xml, qemu_info, read, run, write


@pytest.mark.parametrize("name,fmt", [("a.qcow2", "qcow2"), ("b.vmdk", "vmdk"),
                                      ("c.vdi", "vdi"), ("d.vhd", "vpc"), ("e.img", "raw"),
                                      ("f.raw", "raw"), ("plain", "raw")])
def test_name_suffix_picks_the_format(mounted, name, fmt):
    v = mounted.vol(name)
    os.mkdir(v)
    info = qemu_info(v / "path")
    assert info["format"] == fmt and info["virtual-size"] == GiB
    assert read(v / "format") == f"{fmt}\n"


def test_backing_store_makes_an_overlay(mounted):
    base = mounted.vol("base.raw")
    os.mkdir(base)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", base / "path"])
    ov = mounted.vol("overlay.qcow2")
    os.mkdir(ov)
    base_path = os.path.realpath(base / "path")
    write(ov / "config.xml",
          f"<volume>\n  <name>overlay.qcow2</name>\n  <capacity unit='G'>1</capacity>\n"
          f"  <target>\n    <format type='qcow2'/>\n  </target>\n  <backingStore>\n"
          f"    <path>{base_path}</path>\n    <format type='raw'/>\n  </backingStore>\n"
          "</volume>\n")
    info = qemu_info(ov / "path")
    assert info["backing-filename"] == base_path
    assert info.get("backing-filename-format") == "raw"
    out = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x61 0 1M", ov / "path"]).stdout
    assert "read 1048576/1048576" in out
    status = parse(read(ov / "status.xml"))
    assert status.findtext("backingStore/path") == base_path
    assert status.find("backingStore/format").get("type") == "raw"


@pytest.mark.parametrize("compat,features,lazy", [("0.10", "", False),
                                                   ("1.1", "<features><lazy_refcounts/></features>",
                                                    True)])
def test_qcow2_compat_and_lazy_refcounts(mounted, compat, features, lazy):
    v = mounted.vol("q.qcow2")
    os.mkdir(v)
    write(v / "config.xml",
          f"<volume>\n  <name>q.qcow2</name>\n  <capacity unit='M'>64</capacity>\n"
          f"  <target>\n    <format type='qcow2'/>\n    <compat>{compat}</compat>\n"
          f"    {features}\n  </target>\n</volume>\n")
    data = qemu_info(v / "path")["format-specific"]["data"]
    assert data["compat"] == compat
    assert bool(data.get("lazy-refcounts")) is lazy


@pytest.fixture
def xfs_dir(tmp_path):
    """An xfs filesystem on a loop device the test makes (reflink=1 by default)."""
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    run(["truncate", "-s", "2G", img])
    dev = run(["losetup", "-f", "--show", img]).stdout.strip()
    try:
        run(["mkfs.xfs", "-q", dev])
        run(["mount", dev, mnt])
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_clone_on_xfs_is_a_reflink(mounted, xfs_dir):
    target = xfs_dir / "images"
    target.mkdir()
    os.mkdir(mounted.pool("fast"))
    write(mounted.pool("fast") / "config.xml", pool_xml("fast", target))
    write(mounted.pool("fast") / "state", "running\n")
    v = mounted.vol("src.raw", pool="fast")
    os.mkdir(v)
    write(v / "control", "resize --shrink 512M\n")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x7e 0 512M", v / "path"])
    os.sync()
    free_before = os.statvfs(xfs_dir).f_bfree * os.statvfs(xfs_dir).f_frsize
    write(v / "control", "clone dst.raw\n")
    os.sync()
    free_after = os.statvfs(xfs_dir).f_bfree * os.statvfs(xfs_dir).f_frsize
    assert free_before - free_after < 32 * MiB  # shared extents, not a 512 MiB copy
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x7e 0 512M",
               mounted.vol("dst.raw", pool="fast") / "path"]).stdout
    assert "read 536870912/536870912" in out
    write(mounted.pool("fast") / "state", "inactive\n")
