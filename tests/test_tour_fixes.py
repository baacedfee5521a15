"""What an outside tester found with only the README (issue 11 follow-up), each on a
real mount, driven as users do:

1. a running dir or fs pool whose target (or a directory above it) is swapped for a
   symlink never follows it: refused, nothing made or removed there, the pool
   inaccessible with the reason;
2. wipe zero of a qcow2 keeps its encryption, compat, lazy refcounts, cluster size and
   preallocation;
3. backing-chain loops and self-references: ELOOP at once, and shown at listing;
4. snapshots of an encrypted qcow2 get its secret;
5. an allocation above the capacity only within qemu's rounding;
6. a background mount that fails after forking says why;
7. an interrupted wipe says what it left;
8. refusals and error lines: mkdir of an existing snapshot, pending disk volumes,
   read refusals (log only: tar of the tree sees no file change);
9. chmod/chown of command files never grants write to anyone but root.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from loopdev import LoopSet, findmnt, skip_reason
from mount_helpers import (
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    read,
    run,
    write,
    write_errno,
)


def state(pdir: Path) -> str:
    return read(pdir / "state").strip()


def mkdir_errno(path: Path) -> int | None:
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    return None


def rmdir_errno(path: Path) -> int | None:
    try:
        os.rmdir(path)
    except OSError as exc:
        return exc.errno
    return None


# ---- 1. a replaced target is never followed ----------------------------------------


@pytest.mark.parametrize("swap", ["target", "parent"])
def test_dir_pool_never_follows_a_target_swapped_for_a_symlink(mounted, tmp_path, swap):
    real = tmp_path / "real" / "pool"
    other = tmp_path / "other" / "pool"
    real.mkdir(parents=True)
    other.mkdir(parents=True)
    p = define_pool(mounted, "p1", real, build=False)
    os.mkdir(p / "volumes" / "a.raw")
    (other / "victim.raw").write_bytes(b"not storagefs's")
    # the victim is found by name if the pool followed the link: it must survive
    (real / "victim.raw").write_bytes(b"")
    command(p / "control", "refresh")
    assert ls_names(p / "volumes") == {"a.raw", "victim.raw"}

    if swap == "target":
        real.rename(tmp_path / "real" / "pool.moved")
        real.symlink_to(other)
    else:
        (tmp_path / "real").rename(tmp_path / "real.moved")
        (tmp_path / "real").symlink_to(tmp_path / "other")

    # rmdir of a volume whose name is also in the other directory: refused
    assert rmdir_errno(p / "volumes" / "victim.raw") == errno.EIO
    line = assert_one_error_line(p)
    assert "was replaced" in line and str(real) in line, line
    assert state(p) == "inaccessible"
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"
    assert mkdir_errno(p / "volumes" / "b.raw") == errno.EIO
    assert "was replaced" in assert_one_error_line(p)
    assert os.listdir(other) == ["victim.raw"]
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"
    assert ls_names(p / "volumes") == set()
    # a refresh finds it still replaced; moved back, the pool runs again
    code, _ = write_errno(p / "control", "refresh\n")
    assert code == errno.EIO and state(p) == "inaccessible"
    if swap == "target":
        real.unlink()
        (tmp_path / "real" / "pool.moved").rename(real)
    else:
        (tmp_path / "real").unlink()
        (tmp_path / "real.moved").rename(tmp_path / "real")
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert ls_names(p / "volumes") == {"a.raw", "victim.raw"}
    os.rmdir(p / "volumes" / "victim.raw")
    assert not (real / "victim.raw").exists()
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"


def test_dir_pool_swapped_target_is_noticed_without_an_operation(mounted, tmp_path):
    """The figures refreshed in the background find it too (within a few seconds)."""
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    p = define_pool(mounted, "p1", real, build=False)
    real.rename(tmp_path / "moved")
    real.symlink_to(other)
    deadline = time.monotonic() + 10
    while state(p) != "inaccessible" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(p) == "inaccessible"
    assert "was replaced" in read(p / "error")
    # stop and start: the pool takes what the target is now, knowingly
    command(p / "state", "inactive")
    command(p / "state", "running")
    os.mkdir(p / "volumes" / "new.raw")
    assert os.listdir(other) == ["new.raw"]


def test_fs_pool_never_follows_a_mount_point_moved_away(mounted, tmp_path):
    reason = skip_reason("mkfs.ext4", "mount", "umount", "findmnt")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")
        run(["mkfs.ext4", "-q", "-F", dev.path])
        base, other = tmp_path / "base", tmp_path / "other"
        (base / "fsmnt").mkdir(parents=True)
        (other / "fsmnt").mkdir(parents=True)
        p = mounted.pool("fsp")
        os.mkdir(p)
        write(p / "config.xml", f"<pool type='fs'>\n  <name>fsp</name>\n  <source>\n"
              f"    <device path='{dev.path}'/>\n    <format type='ext4'/>\n  </source>\n"
              f"  <target>\n    <path>{base / 'fsmnt'}</path>\n  </target>\n</pool>\n")
        command(p / "state", "running")
        os.mkdir(p / "volumes" / "v1")
        # the directory above the mount point is renamed (the mount goes with it) and a
        # symlink to another directory takes its name
        base.rename(tmp_path / "base.moved")
        base.symlink_to(other)
        assert mkdir_errno(p / "volumes" / "v2") == errno.ENOENT
        assert "not mounted" in assert_one_error_line(p)
        assert state(p) == "inaccessible"
        assert os.listdir(other / "fsmnt") == []
        assert findmnt(tmp_path / "base.moved" / "fsmnt")["SOURCE"] == dev.path
        # stop leaves the moved mount alone (it is not where the pool mounted it)
        command(p / "state", "inactive")
        assert findmnt(tmp_path / "base.moved" / "fsmnt")["SOURCE"] == dev.path
        run(["umount", tmp_path / "base.moved" / "fsmnt"])
