"""Issue 10, items 17 and 18, on a real mount: raw clones cross filesystems; every
refusal leaves its line in `error` and the log; error texts say what happened;
a SIGKILLed storagefs leaves no tool process writing on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mount_helpers import (
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    qemu_info,
    read,
    run,
    write_errno,
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256M"):
    """A tmpfs of our own at path (another filesystem than tmp_path's)."""
    path.mkdir()
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_pattern(path: Path, offsets: list[int], size: int = MiB) -> None:
    """Data at the given offsets of a sparse file; the rest stays a hole."""
    with open(path, "r+b") as f:
        for i, off in enumerate(offsets):
            f.seek(off)
            f.write(bytes([i + 1]) * size)


# ------------------------------------------------------------------ item 17


def test_raw_clone_to_a_pool_on_another_filesystem_is_a_sparse_copy(mounted, tmp_path):
    m = mounted
    os.mkdir(m.vol("src.raw"))  # 1 GiB sparse raw in the default pool (tmp_path's fs)
    offsets = [0, 300 * MiB, 1023 * MiB]
    fill_pattern(m.images / "src.raw", offsets)
    with tmpfs(tmp_path / "other") as other:
        assert os.stat(other).st_dev != os.stat(m.images).st_dev
        p2 = define_pool(m, "p2", other / "pool")
        res = write_errno(m.vol("src.raw") / "control", "clone copy.raw --pool p2\n")
        assert res == (None, None), f"clone across filesystems failed: {res}, " \
            f"error: {read(m.vol('src.raw') / 'error')!r}"
        assert "copy.raw" in ls_names(p2 / "volumes")
        copy = other / "pool" / "copy.raw"
        st = os.stat(copy)
        assert st.st_size == os.stat(m.images / "src.raw").st_size
        assert st.st_blocks * 512 <= 16 * MiB, f"the copy is not sparse: {st.st_blocks} blocks"
        with open(copy, "rb") as f:
            for i, off in enumerate(offsets):
                f.seek(off)
                assert f.read(MiB) == bytes([i + 1]) * MiB
            f.seek(100 * MiB)
            assert f.read(MiB) == bytes(MiB)
        assert qemu_info(copy)["format"] == "raw"
        assert not [n for n in os.listdir(other / "pool") if n.startswith(".")]
        command(p2 / "control", "stop")


# ------------------------------------------------------------------ item 18: error texts


def test_tool_error_names_the_tool_once(mounted):
    """qemu-img's own "qemu-img: " prefix is not doubled in error, nor in the log."""
    m = mounted
    os.mkdir(m.vol("bad.qcow2"))
    with open(m.images / "bad.qcow2", "r+b") as f:
        f.seek(20)
        f.write((100).to_bytes(4, "big"))  # cluster_bits 100: qemu-img cannot open it
    code, call = write_errno(m.vol("bad.qcow2") / "control", "resize 2G\n")
    assert (code, call) == (errno.EIO, "write")
    line = assert_one_error_line(m.vol("bad.qcow2"))
    assert "qemu-img: " in line, line
    assert "qemu-img: qemu-img:" not in line, line
    assert "qemu-img: qemu-img:" not in m.log()


def backing_volume_xml(name: str, capacity: int, backing: Path) -> str:
    return (f"<volume type='file'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n"
            f"  <target>\n    <format type='qcow2'/>\n  </target>\n"
            f"  <backingStore>\n    <path>{backing}</path>\n"
            f"    <format type='qcow2'/>\n  </backingStore>\n</volume>\n")


def test_backing_store_change_of_a_volume_with_data_says_so(mounted):
    m = mounted
    os.mkdir(m.vol("base.qcow2"))
    os.mkdir(m.vol("v.qcow2"))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5 0 1M", m.images / "v.qcow2"])
    before = read(m.vol("v.qcow2") / "config.xml")
    doc = backing_volume_xml("v.qcow2", 1 << 30, m.images / "base.qcow2")
    assert write_errno(m.vol("v.qcow2") / "config.xml", doc) == (errno.EBUSY, "write")
    line = assert_one_error_line(m.vol("v.qcow2"))
    assert "cannot change the backing store of a volume that holds data" in line, line
    assert "from qcow2 to qcow2" not in line, line
    assert read(m.vol("v.qcow2") / "config.xml") == before
    assert "backing-filename" not in qemu_info(m.images / "v.qcow2")


# ------------------------------------------------------------------ item 18: orphans


def children(pid: int, comm: str) -> list[int]:
    """PIDs of the children of pid whose command is comm."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and name == comm:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.log_allows("left by an interrupted write", "removed unfinished temp files")
def test_sigkilled_storagefs_leaves_no_qemu_img_writing(mount_factory):
    m = mount_factory()
    os.mkdir(m.vol("big.raw"))
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x1 0 512M", m.images / "big.raw"],
        timeout=300)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY)\n"
         "os.write(fd, b'clone copy.qcow2 --format qcow2\\n')",
         str(m.vol("big.raw") / "control")], stderr=subprocess.PIPE)
    tmp = m.images / ".storagefs-clone-copy.qcow2"
    tool = None
    try:
        while tool is None and writer.poll() is None:
            found = [pid for pid in children(m.proc.pid, "qemu-img")
                     if b"convert" in cmdline(pid)]
            if found and tmp.exists():
                tool = found[0]
                os.kill(tool, signal.SIGSTOP)  # surely still at work when storagefs dies
            time.sleep(0.005)
        assert tool is not None, "the clone ended before its qemu-img convert was seen"
        m.kill()
        deadline = time.monotonic() + 10
        while alive(tool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(tool), f"qemu-img {tool} outlived the SIGKILLed storagefs"
    finally:
        if tool is not None and alive(tool):
            os.kill(tool, signal.SIGKILL)
        writer.kill()
        writer.wait()
    m.recover()
    m.start()
    assert "copy.qcow2" not in ls_names(m.pool() / "volumes")
    left = [n for n in os.listdir(m.images) if n.startswith(".")]
    assert not left, f"temp files left after the restart: {left}"
    assert "big.raw" in ls_names(m.pool() / "volumes")


# ------------------------------------------------------------------ item 18: every refusal


def refused(argv: list) -> str:
    """Run a command that must fail; its stderr."""
    res = run(argv, check=False)
    assert res.returncode != 0, f"{argv} succeeded"
    return res.stderr


def assert_refusal_recorded(obj: Path, *words: str) -> str:
    line = assert_one_error_line(obj)
    for w in words:
        assert w in line, f"{w!r} not in {obj}/error: {line!r}"
    return line


def test_refused_mv_of_a_volume_leaves_its_line(mounted):
    m = mounted
    os.mkdir(m.vol("a.raw"))
    err = refused(["mv", m.vol("a.raw"), m.vol("b.raw")])
    assert "Operation not permitted" in err, err
    assert_refusal_recorded(m.vol("a.raw"), "rename a.raw to b.raw", "cannot be renamed")
    assert "a.raw" in ls_names(m.pool() / "volumes") and "b.raw" not in ls_names(
        m.pool() / "volumes")


def test_every_refusal_of_the_fuse_layer_leaves_its_line(mounted, tmp_path):
    m = mounted
    p = m.pool()
    os.mkdir(m.vol("v.raw"))
    v = m.vol("v.raw")
    # (command, directory whose error must say it, words of the line)
    cases = [
        (["rm", p / "status.xml"], p, ["unlink status.xml", "generated by storagefs"]),
        (["rm", "-rf", v], v, []),  # unlink of its files or rmdir of snapshots/: refused
        (["chmod", "700", p], p, ["setattr default", "mode and owner"]),
        (["chmod", "600", p / "uuid"], p, ["setattr uuid", "read-only"]),
        (["ln", "-s", "/etc", p / "link"], p, ["symlink link", "symbolic links"]),
        (["ln", p / "config.xml", p / "hard"], p, ["link hard", "hard links"]),
        (["mkfifo", v / "fifo"], v, ["mknod fifo", "cannot be made here"]),
        (["mkdir", v / "snapshots" / "s1" / "x"], v, None),  # no such snapshot: ENOENT
        (["rmdir", p / "volumes"], p, ["rmdir volumes", "part of the tree"]),
        (["sh", "-c", f"echo x > {p}/status.xml"], p, ["open status.xml", "read-only"]),
    ]
    for argv, obj, words in cases:
        refused(argv)
        if words is not None:
            assert_refusal_recorded(obj, *words)
    # a rename between two directories
    (p / "scratch.tmp").write_text("x")
    with contextlib.suppress(OSError):
        os.rename(p / "scratch.tmp", v / "scratch.tmp")
    assert_refusal_recorded(p, "rename scratch.tmp to scratch.tmp", "within their directory")
    os.unlink(p / "scratch.tmp")
    # nothing was changed by any of them
    assert read(p / "state") == "running\n"
    assert "v.raw" in ls_names(p / "volumes")
    assert {"link", "hard"}.isdisjoint(ls_names(p))
    # refusals outside any object go to the log
    refused(["mkdir", m.pools / "by-uuid" / "x"])
    assert "directories are made only in" in m.log()
