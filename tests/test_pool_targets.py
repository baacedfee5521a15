"""Issue 10, item 3, on real mounts: a pool's storage is never the mount itself, a
system tree or the state directory (SPEC "Names are safe"), and targets and
sources are compared after resolving them, so two spellings of one directory
never make two pools (nor two by-path links).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from loopdev import LoopSet, skip_reason
from mount_helpers import (
    assert_one_error_line,
    command,
    escape_path,
    pool_xml,
    read,
    write,
    write_errno,
)


def refused(m, name: str, doc: str, code: int = errno.EPERM) -> str:
    """Define pools/NAME with doc: refused with ``code`` at write(), one error line,
    and nothing defined (config.xml reads as before)."""
    pdir = m.pool(name)
    if not pdir.exists():
        os.mkdir(pdir)
    before = read(pdir / "config.xml")
    got = write_errno(pdir / "config.xml", doc)
    assert got == (code, "write"), f"{name}: {got} for\n{doc}"
    line = assert_one_error_line(pdir)
    assert read(pdir / "config.xml") == before
    return line


def accepted(m, name: str, doc: str) -> None:
    pdir = m.pool(name)
    if not pdir.exists():
        os.mkdir(pdir)
    write(pdir / "config.xml", doc)
    assert read(pdir / "type").strip()


def disk_xml(name: str, device: str, target: str = "/dev") -> str:
    return (f"<pool type='disk'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <format type='gpt'/>\n  </source>\n"
            f"  <target>\n    <path>{target}</path>\n  </target>\n</pool>\n")


def fs_xml(name: str, device: str, target: Path) -> str:
    return (f"<pool type='fs'>\n  <name>{name}</name>\n  <source>\n"
            f"    <device path='{device}'/>\n    <format type='ext4'/>\n  </source>\n"
            f"  <target>\n    <path>{target}</path>\n  </target>\n</pool>\n")


def test_a_target_inside_the_mount_is_refused(mounted, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(mounted.pools)
    for i, target in enumerate((mounted.mnt, mounted.pools, mounted.pool() / "volumes",
                                mounted.mnt / "new-dir", alias / "default")):
        line = refused(mounted, f"in{i}", pool_xml(f"in{i}", target))
        assert "inside the storagefs mount" in line, line
    # the tree answers, and nothing can be started there
    assert sorted(os.listdir(mounted.pools))[:2] == ["by-path", "by-uuid"]
    assert write_errno(mounted.pool("in0") / "state", "running\n")[0] == errno.ENOENT


@pytest.mark.parametrize("target", ["/", "/etc", "/etc/storagefs-test", "/proc/self",
                                    "/sys/kernel", "/boot", "/run/storagefs-test", "/dev",
                                    "/dev/shm/storagefs-test", "/tmp/../etc", "//etc"])
def test_system_trees_are_refused(mounted, target):
    line = refused(mounted, "sys", pool_xml("sys", target))
    assert "root directory" in line or "system tree" in line, line


def test_a_symlink_into_a_system_tree_is_refused(mounted, tmp_path):
    (tmp_path / "to-etc").symlink_to("/etc")
    line = refused(mounted, "sneaky", pool_xml("sneaky", tmp_path / "to-etc"))
    assert "system tree /etc" in line and "(that is '/etc')" in line, line


def test_what_libvirt_allows_stays_allowed(mounted, tmp_path):
    accepted(mounted, "below-root", pool_xml("below-root", tmp_path / "p"))
    accepted(mounted, "disk", disk_xml("disk", "/dev/storagefs-test-nodisk"))
    accepted(mounted, "vg", "<pool type='logical'>\n  <name>vg</name>\n  <source>\n"
             "    <name>sfstestvg</name>\n  </source>\n  <target>\n"
             "    <path>/dev/sfstestvg</path>\n  </target>\n</pool>\n")
    accepted(mounted, "img", pool_xml("img", mounted.images / "sub"))


def test_the_state_directory_is_refused_except_its_images(mounted):
    sd = mounted.state_dir
    for i, target in enumerate((sd, sd / "secrets", sd / "pools", sd / "volumes" / "x")):
        line = refused(mounted, f"st{i}", pool_xml(f"st{i}", target))
        assert "state directory" in line, line


def test_two_spellings_of_one_directory_are_one_pool(mounted, tmp_path):
    p1 = tmp_path / "p1"
    p1.mkdir()
    accepted(mounted, "p1", pool_xml("p1", p1))
    (tmp_path / "p1-alias").symlink_to(p1)
    for i, spelling in enumerate((f"/{p1}", f"{tmp_path}/./p1", f"{tmp_path}/x/../p1",
                                  tmp_path / "p1-alias")):
        line = refused(mounted, f"p{i + 2}", pool_xml(f"p{i + 2}", spelling), errno.EEXIST)
        assert "conflict with pool: 'p1'" in line, line
    links = {n: os.readlink(mounted.pools / "by-path" / n)
             for n in os.listdir(mounted.pools / "by-path")}
    assert [n for n, t in links.items() if t == "../p1"] == [escape_path(p1)]
    assert len(links) == 2  # default and p1


def test_by_path_names_the_resolved_target(mounted, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    accepted(mounted, "l", pool_xml("l", f"/{tmp_path}/link/"))
    assert os.readlink(mounted.pools / "by-path" / escape_path(real)) == "../l"


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_source_devices_are_compared_resolved(mounted, tmp_path):
    with LoopSet(tmp_path) as loops:
        dev = loops.make("32M").path
        accepted(mounted, "fs1", fs_xml("fs1", dev, tmp_path / "t1"))
        (tmp_path / "devlink").symlink_to(dev)
        for i, spelling in enumerate((dev.replace("/dev/", "/dev/./"), tmp_path / "devlink")):
            line = refused(mounted, f"fs{i + 2}", fs_xml(f"fs{i + 2}", spelling,
                                                          tmp_path / f"t{i + 2}"), errno.EEXIST)
            assert "conflict with pool: 'fs1'" in line, line
    line = refused(mounted, "etcdev", fs_xml("etcdev", "/etc/passwd", tmp_path / "t9"))
    assert "source '/etc/passwd'" in line and "system tree /etc" in line, line


def test_start_checks_the_target_again_and_never_deadlocks(mounted, tmp_path):
    """A target that became a symlink into the mount after the define: start refuses
    it at once (it used to wait forever on the mount's own event loop)."""
    t = tmp_path / "later"
    t.mkdir()
    accepted(mounted, "later", pool_xml("later", t))
    t.rmdir()
    t.symlink_to(mounted.pool() / "volumes")
    got: list = []
    writer = threading.Thread(
        target=lambda: got.append(write_errno(mounted.pool("later") / "state", "running\n")),
        daemon=True)
    writer.start()
    writer.join(20)
    if writer.is_alive():
        mounted.kill()  # unblocks the writer (ENOTCONN) so the test can end
        writer.join(10)
        pytest.fail("echo running > state did not return within 20 s: the mount deadlocked")
    assert got == [(errno.EPERM, "write")]
    assert "inside the storagefs mount" in assert_one_error_line(mounted.pool("later"))
    assert read(mounted.pool("later") / "state") == "inactive\n"


def test_a_stored_pool_that_now_points_into_the_state_directory_is_not_started(mounted,
                                                                              tmp_path):
    """A pool defined (and autostarted) on a directory that was later swapped for a
    symlink to the secrets: after a remount it stays inactive and says why."""
    t = tmp_path / "moved"
    t.mkdir()
    accepted(mounted, "moved", pool_xml("moved", t))
    command(mounted.pool("moved") / "control", "start")
    write(mounted.pool("moved") / "autostart", "yes\n")
    s = mounted.mnt / "secrets" / "5b2e6f0a-7c1d-4e8f-9a3b-2c4d6e8f0a1b"
    os.mkdir(s)
    write(s / "config.xml", "<secret ephemeral='no' private='yes'>\n"
          "  <uuid>5b2e6f0a-7c1d-4e8f-9a3b-2c4d6e8f0a1b</uuid>\n</secret>\n")
    write(s / "value", "hunter2\n")
    mounted.stop()
    t.rmdir()
    t.symlink_to(mounted.state_dir / "secrets")
    mounted.start()
    pdir = mounted.pool("moved")
    assert read(pdir / "state") == "inactive\n"
    assert "state directory" in read(pdir / "error")
    assert os.listdir(pdir / "volumes") == []
