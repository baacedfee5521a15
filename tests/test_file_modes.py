"""Issue 10, item 2, on real mounts: files storagefs makes are never more readable
than their source or their document (SPEC "Never trust guest bytes": umask 077,
explicit modes). For each way a volume file is made (mkdir, a document, clone by
sparse copy, by reflink and by qemu-img convert, a format change, a snapshot
revert, a wipe that re-makes the image, and the temp file of a running clone)
the mode is checked and a second Unix user tries to read the file.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_other_users
from loopdev import LoopSet, skip_reason
from mount_helpers import (
    MiB,
    command,
    daemon_pids_for,
    force_cleanup,
    is_mounted,
    pool_xml,
    qemu_info,
    read,
    run,
    storagefs_cmd,
    write,
)
from test_other_users import as_user

#: the second Unix user (made and removed by the fixture of test_other_users)
other_user = test_other_users.other_user

GROUP_READ_DOC = (
    "<volume>\n  <name>{name}</name>\n  <capacity unit='G'>1</capacity>\n"
    "  <target>\n    <format type='{fmt}'/>\n    <permissions>\n      <mode>{mode}</mode>\n"
    "      <owner>0</owner>\n      <group>0</group>\n    </permissions>\n  </target>\n"
    "</volume>\n")
PLAIN_DOC = ("<volume>\n  <name>{name}</name>\n  <capacity unit='G'>1</capacity>\n"
             "  <target>\n    <format type='{fmt}'/>\n  </target>\n</volume>\n")


def umask_of(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return line.split()[1]
    raise AssertionError(f"no Umask in /proc/{pid}/status")


def file_of(vol: Path) -> Path:
    return Path(os.path.realpath(vol / "path"))


def assert_private(user, path: Path, mode: int = 0o600) -> None:
    """``path`` has ``mode`` exactly, and the other user cannot read it."""
    got = stat.S_IMODE(os.stat(path).st_mode)
    assert got == mode, f"{path.name}: mode {got:o}, want {mode:o}"

    def open_it():
        os.close(os.open(path.name, os.O_RDONLY))

    res = as_user(user, path.parent, {"read": open_it})
    assert res["read"] == ["err", "EACCES"], f"{path.name}: the other user got {res['read']}"


def test_the_server_runs_with_umask_077(mounted):
    assert umask_of(mounted.proc.pid) == "0077"


def test_the_daemon_runs_with_umask_077(tmp_path):
    mnt, sd = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    try:
        res = subprocess.run([*storagefs_cmd(), "mount", str(mnt), "--state-dir", str(sd)],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                             env={**os.environ}, preexec_fn=lambda: os.umask(0o022))
        assert res.returncode == 0, res.stderr
        pids = daemon_pids_for(mnt)
        assert pids
        assert {umask_of(p) for p in pids} == {"0077"}
        os.mkdir(mnt / "pools" / "default" / "volumes" / "v.qcow2")
        assert stat.S_IMODE(os.stat(sd / "images" / "v.qcow2").st_mode) == 0o600
        un = run([*storagefs_cmd(), "unmount", str(mnt)], check=False, timeout=30)
        assert un.returncode == 0, un.stderr
        deadline = time.monotonic() + 10
        while daemon_pids_for(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(mnt)
    finally:
        force_cleanup(mnt)


def test_mkdir_and_documents_make_private_files(mounted, other_user):
    for name in ("m.raw", "m.qcow2", "m.vmdk"):
        os.mkdir(mounted.vol(name))
        assert_private(other_user, file_of(mounted.vol(name)))
    # a document's <permissions> is the mode (here group root may read; others not)
    v = mounted.vol("doc.qcow2")
    os.mkdir(v)
    write(v / "config.xml", GROUP_READ_DOC.format(name="doc.qcow2", fmt="qcow2", mode="0640"))
    assert_private(other_user, file_of(v), 0o640)


def test_clones_are_as_private_as_their_source(mounted, other_user):
    src = mounted.vol("src.raw")
    os.mkdir(src)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", src / "path"])
    command(src / "control", "clone plain.raw")
    command(src / "control", "clone conv.qcow2 --format qcow2")
    command(src / "control", "clone conv.vmdk --format vmdk")
    for name in ("plain.raw", "conv.qcow2", "conv.vmdk"):
        assert_private(other_user, file_of(mounted.vol(name)))
    # a source with a mode of its own: each copy has exactly that mode
    g = mounted.vol("g.raw")
    os.mkdir(g)
    write(g / "config.xml", GROUP_READ_DOC.format(name="g.raw", fmt="raw", mode="0640"))
    command(g / "control", "clone g-copy.raw")
    command(g / "control", "clone g-conv.qcow2 --format qcow2")
    for name in ("g-copy.raw", "g-conv.qcow2"):
        assert_private(other_user, file_of(mounted.vol(name)), 0o640)


@pytest.mark.skipif(skip_reason("mkfs.xfs") is not None, reason=skip_reason("mkfs.xfs") or "")
def test_a_reflink_clone_is_as_private_as_its_source(mounted, other_user, tmp_path):
    with LoopSet(tmp_path) as loops:
        dev = loops.make("512M").path
        run(["mkfs.xfs", "-q", dev])
        xfs = tmp_path / "xfs"
        xfs.mkdir()
        run(["mount", dev, xfs])
        target = xfs / "images"
        os.mkdir(mounted.pool("fast"))
        write(mounted.pool("fast") / "config.xml", pool_xml("fast", target))
        command(mounted.pool("fast") / "control", "build")
        write(mounted.pool("fast") / "state", "running\n")
        src = mounted.vol("src.raw", pool="fast")
        os.mkdir(src)
        write(src / "control", "resize --shrink 64M\n")
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x7e 0 64M", src / "path"])
        os.sync()
        free = os.statvfs(xfs).f_bfree
        command(src / "control", "clone dst.raw")
        os.sync()
        assert (free - os.statvfs(xfs).f_bfree) * os.statvfs(xfs).f_frsize < 16 * MiB  # reflink
        assert_private(other_user, file_of(mounted.vol("dst.raw", pool="fast")))
        write(mounted.pool("fast") / "state", "inactive\n")


def test_a_format_change_keeps_the_volume_private(mounted, other_user):
    v = mounted.vol("f")
    os.mkdir(v)
    write(v / "config.xml", PLAIN_DOC.format(name="f", fmt="qcow2"))
    assert qemu_info(file_of(v))["format"] == "qcow2"
    assert_private(other_user, file_of(v))
    # the document set a mode before: the re-made file keeps it, no more
    w = mounted.vol("w")
    os.mkdir(w)
    write(w / "config.xml", GROUP_READ_DOC.format(name="w", fmt="raw", mode="0640"))
    write(w / "config.xml", PLAIN_DOC.format(name="w", fmt="qcow2"))
    assert qemu_info(file_of(w))["format"] == "qcow2"
    assert_private(other_user, file_of(w), 0o640)


def test_snapshot_revert_and_wipe_keep_the_volume_private(mounted, other_user):
    v = mounted.vol("s.qcow2")
    os.mkdir(v)
    os.mkdir(v / "snapshots" / "before")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", file_of(v)])
    command(v / "control", "revert before")
    assert_private(other_user, file_of(v))
    command(v / "control", "wipe")
    assert_private(other_user, file_of(v))


def test_the_temp_file_of_a_running_convert_is_private(mounted, other_user):
    src = mounted.vol("big.raw")
    os.mkdir(src)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 768M", src / "path"], timeout=120)
    images = mounted.images
    seen: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            for name in os.listdir(images):
                if name.startswith(".storagefs-clone-"):
                    try:
                        seen.append(stat.S_IMODE(os.stat(images / name).st_mode))
                    except FileNotFoundError:
                        pass
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        command(src / "control", "clone big.qcow2 --format qcow2")
    finally:
        done.set()
        t.join(5)
    assert seen, "the clone's temp file was never seen"
    assert set(seen) == {0o600}, sorted(set(seen))
    assert_private(other_user, file_of(mounted.vol("big.qcow2")))


def test_the_other_user_cannot_rebuild_a_private_volume_from_a_clone(mounted, other_user):
    """The report: a 0600 volume, cloned with a convert, read by another user."""
    v = mounted.vol("private.raw")
    os.mkdir(v)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x2a 0 1M", file_of(v)])
    command(v / "control", "clone leak.qcow2 --format qcow2")
    path = file_of(mounted.vol("leak.qcow2"))

    def read_it():
        fd = os.open(path.name, os.O_RDONLY)
        try:
            return len(os.read(fd, 4096))
        finally:
            os.close(fd)

    res = as_user(other_user, path.parent, {"read": read_it})
    assert res["read"] == ["err", errno.errorcode[errno.EACCES]]
    assert read(v / "format") == "raw\n"
