"""Issue 10, item 14: a busy object answers at once (SPEC "No call waits on storage").

While a long operation really runs on a volume (a `clone --format qcow2` of a
volume full of data, its qemu-img convert held with SIGSTOP so that it is surely
still at work), a new operation on that volume (rmdir, a second control writer,
config.xml, a snapshot) fails at once with EBUSY and the running one named in
`error`; `ls volumes/`, status.xml, mkdir and operations on other volumes answer.
Likewise a pool whose refresh runs refuses a new pool operation with EBUSY.

Each call that could wait runs in a child process with a generous time limit (a
hang guard, not a timed assertion: before the fix these calls waited for the
operation to finish, i.e. forever while qemu-img is stopped).
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

from mount_helpers import (
    MiB,
    assert_one_error_line,
    define_pool,
    qemu_info,
    read,
    run,
    volume_defaults_el,
    volume_xml,
)

HANG_GUARD = 30

CALL = r"""
import os, sys
op, path, data = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    if op == "write":
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    elif op == "rmdir":
        os.rmdir(path)
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "ls":
        sys.stdout.write("\n".join(sorted(os.listdir(path))))
    elif op == "cat":
        sys.stdout.write(open(path).read())
    sys.stdout.write("\nok")
except OSError as e:
    sys.stdout.write(f"\nerrno {e.errno}")
"""


def call(op: str, path: Path, data: str = "") -> tuple[str, int | None]:
    """Run one syscall in a child; (what it printed, its errno or None)."""
    res = subprocess.run([sys.executable, "-c", CALL, op, str(path), data],
                         capture_output=True, text=True, timeout=HANG_GUARD)
    out, _, last = res.stdout.rpartition("\n")
    assert last == "ok" or last.startswith("errno "), res.stderr
    return out, None if last == "ok" else int(last.split()[1])


def tool_children(pid: int, word: bytes) -> list[int]:
    """qemu-img children of pid whose argv holds word."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and "(qemu-img)" in stat and word in args:
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def held(pid: int):
    """The tool process stopped while the block runs, then let go."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def writer(path: Path, line: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CALL, "write", str(path), line],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def catch_tool(m, proc: subprocess.Popen, word: bytes, ready=lambda: True) -> int:
    while proc.poll() is None:
        found = tool_children(m.proc.pid, word)
        if found and ready():
            return found[0]
        time.sleep(0.002)
    raise AssertionError(f"the operation ended before its qemu-img {word.decode()} was seen: "
                         f"{proc.communicate()}")


@contextlib.contextmanager
def long_operation(m, path: Path, line: str, word: bytes, ready=lambda: True):
    """Write line to path in a child; while the block runs, the operation's qemu-img
    (its argv holds word) is held stopped. Afterwards the write must succeed."""
    proc = writer(path, line)
    try:
        tool = catch_tool(m, proc, word, ready)
        with held(tool):
            yield tool
            assert running(tool) and proc.poll() is None, "the operation ended meanwhile"
        out, err = proc.communicate(timeout=300)
        assert out.endswith("ok"), (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_volume_refuses_at_once_and_everything_else_answers(mounted):
    m = mounted
    vols = m.pool() / "volumes"
    os.mkdir(vols / "big.raw")
    os.mkdir(vols / "other.raw")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x7 0 256M", m.images / "big.raw"],
        timeout=300)
    big = vols / "big.raw"
    doc_before = read(big / "config.xml")
    tmp = m.images / ".storagefs-clone-copy.qcow2"
    with long_operation(m, big / "control", "clone copy.qcow2 --format qcow2\n", b"convert",
                        tmp.exists):
        # the volume is busy: refused at once, the running operation named
        assert call("rmdir", big)[1] == errno.EBUSY
        line = assert_one_error_line(big)
        assert "still in use" in line and "clone to 'copy.qcow2' running" in line, line
        assert call("write", big / "control", "resize 2G\n")[1] == errno.EBUSY
        assert call("write", big / "control", "wipe\n")[1] == errno.EBUSY
        bigger = volume_xml("big.raw", 2 << 30)
        assert call("write", big / "config.xml", bigger)[1] == errno.EBUSY
        assert "clone to 'copy.qcow2' running" in assert_one_error_line(big)
        # the pool cannot stop under it, and says why
        assert call("write", m.pool() / "control", "stop\n")[1] == errno.EBUSY
        assert "clone to 'copy.qcow2' of 'big.raw'" in assert_one_error_line(m.pool())
        # everything else answers
        names, err = call("ls", vols)
        assert err is None and {"big.raw", "other.raw"} <= set(names.split("\n"))
        assert call("cat", m.pool() / "status.xml")[1] is None
        assert call("cat", big / "progress")[0].startswith("clone ")
        assert call("mkdir", vols / "new.raw")[1] is None
        assert call("write", vols / "other.raw" / "control", "resize 2G\n")[1] is None
        assert read(vols / "other.raw" / "capacity") == f"{2 << 30}\n"
        assert call("rmdir", vols / "new.raw")[1] is None
    # nothing refused was done: the volume and its data stay, its document too
    assert "big.raw" in os.listdir(vols)
    assert read(big / "config.xml") == doc_before
    assert read(big / "capacity") == f"{1 << 30}\n"
    with open(m.images / "big.raw", "rb") as f:
        assert f.read(MiB) == b"\x07" * MiB
    assert qemu_info(m.images / "copy.qcow2")["format"] == "qcow2"


def test_busy_qcow2_volume_refuses_snapshots_at_once(mounted):
    m = mounted
    vols = m.pool() / "volumes"
    os.mkdir(vols / "q.qcow2")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3 0 256M", m.images / "q.qcow2"],
        timeout=300)
    q = vols / "q.qcow2"
    tmp = m.images / ".storagefs-clone-c.raw"
    with long_operation(m, q / "control", "clone c.raw --format raw\n", b"convert",
                        tmp.exists):
        assert call("mkdir", q / "snapshots" / "s1")[1] == errno.EBUSY
        assert call("write", q / "control", "snapshot s2\n")[1] == errno.EBUSY
        assert "clone to 'c.raw' running" in assert_one_error_line(q)
    assert os.listdir(q / "snapshots") == []
    assert not qemu_info(m.images / "q.qcow2").get("snapshots")


def test_busy_pool_refuses_pool_operations_at_once(mounted, tmp_path):
    """A pool's refresh runs (held in one of its qemu-img info calls): a new pool
    operation gets EBUSY naming it; listings, status.xml and volume operations answer."""
    m = mounted
    p = define_pool(m, "busy", tmp_path / "busy", extra=volume_defaults_el("qcow2", "16M"))
    for i in range(20):
        os.mkdir(p / "volumes" / f"v{i}.qcow2")
    os.mkdir(p / "volumes" / "plain.raw")
    # let the background probes of the new images end first (their qemu-img info
    # calls are not the refresh's)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        if tool_children(m.proc.pid, b"info"):
            quiet_since = time.monotonic()
        time.sleep(0.01)
    config = read(p / "config.xml")
    with long_operation(m, p / "control", "refresh\n", b"info"):
        changed = config.replace("<pool type='dir'>", "<pool type='dir'>\n  <!-- new -->")
        assert call("write", p / "config.xml", changed)[1] == errno.EBUSY
        assert call("write", p / "control", "stop\n")[1] == errno.EBUSY
        assert call("write", p / "state", "inactive\n")[1] == errno.EBUSY
        line = assert_one_error_line(p)
        assert "storage pool 'busy' is busy: refresh running" in line, line
        assert call("cat", p / "status.xml")[1] is None
        names, err = call("ls", p / "volumes")
        assert err is None and "plain.raw" in names.split("\n")
        assert call("write", p / "volumes" / "plain.raw" / "control", "resize 32M\n")[1] is None
        assert call("cat", m.pools / "default" / "state")[0] == "running\n"
    assert read(p / "config.xml") == config
    assert read(p / "state") == "running\n"
