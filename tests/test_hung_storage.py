"""Issue 11, "No FUSE handler ever waits on storage", on a real mount: a dir pool whose
target lies on a FUSE filesystem (bindfs) whose server is stopped with SIGSTOP, which is
how a dead NFS server looks. While it hangs, every other path answers, the pool's own
generated files answer from what storagefs last knew, the pool becomes `inaccessible`
with the reason once the time limit passes, new operations on it fail at once, `stop`
is accepted, and after SIGCONT the pool comes back.

No timed assertions: each call runs in a helper thread, and "answers" means it returned
well before the storage time limit (STORAGEFS_TOOL_TIMEOUT) would have let it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time

import pytest
from mount_helpers import answer_within, command, read, write_errno

LIMIT = 6  # seconds: the storage time limit of this mount
ANSWER = 2.5  # a call "answers" when it returns within this (well below LIMIT)


@pytest.fixture
def bindfs(tmp_path):
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    proc = subprocess.Popen(["bindfs", "-f", str(src), str(dst)])
    for _ in range(200):
        if os.path.ismount(dst):
            break
        time.sleep(0.02)
    assert os.path.ismount(dst), "bindfs did not mount"
    yield proc, src, dst
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(["fusermount3", "-u", "-z", str(dst)], capture_output=True)


def within(fn, seconds: float = ANSWER):
    return answer_within(fn, seconds)


@pytest.mark.log_allows("storage became inaccessible", "not responding", "returned after")
def test_a_hung_pool_holds_up_only_itself(mount_factory, bindfs):
    proc, src, dst = bindfs
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))
    hp = m.pool("hp")
    os.mkdir(hp)
    (hp / "config.xml").write_text(
        f"<pool type='dir'><name>hp</name><target><path>{dst}</path></target></pool>\n")
    command(hp / "control", "start")
    os.mkdir(hp / "volumes" / "v1")
    before_status = read(hp / "volumes" / "v1" / "status.xml")
    before_pool = read(hp / "capacity")
    os.mkdir(m.vol("elsewhere"))

    proc.send_signal(signal.SIGSTOP)
    try:
        others = {
            "ls pools/": lambda: os.listdir(m.pools),
            "cat default/status.xml": lambda: read(m.pool() / "status.xml"),
            "ls -l default/volumes/": lambda: [os.lstat(p) for p in
                                               (m.pool() / "volumes").iterdir()],
            "ls devices/": lambda: os.listdir(m.mnt / "devices"),
            "mkdir in default": lambda: os.mkdir(m.vol("made-while-hung")),
            "resize in default": lambda: command(m.vol("elsewhere") / "control",
                                                 "resize 2G"),
        }
        own = {
            "cat hp/status.xml": lambda: read(hp / "status.xml"),
            "cat hp/capacity": lambda: read(hp / "capacity"),
            "cat hp/volumes/v1/status.xml": lambda: read(hp / "volumes" / "v1" /
                                                         "status.xml"),
            "ls -l hp/volumes/": lambda: [os.lstat(p) for p in (hp / "volumes").iterdir()],
        }
        for name, fn in {**others, **own}.items():
            answered, res = within(fn)
            assert answered, f"{name} did not answer while pool hp's storage hangs"
            assert res[0] == "ok", f"{name}: {res[1]}"
        assert read(hp / "volumes" / "v1" / "status.xml") == before_status
        assert read(hp / "capacity") == before_pool

        # an operation that must reach the storage waits at most the time limit ...
        answered, res = within(lambda: command(hp / "control", "refresh"), LIMIT + 10)
        assert answered, "refresh of the hung pool did not return within its time limit"
        assert res[0] == "err" and res[1].errno in (errno.EIO, errno.EBUSY), res
        # ... and meanwhile the pool is marked, with the reason
        assert read(hp / "state").strip() == "inaccessible"
        assert "not responding" in read(hp / "error")
        # new operations on it fail at once
        answered, res = within(lambda: os.mkdir(hp / "volumes" / "v2"))
        assert answered and res[0] == "err" and res[1].errno in (errno.EIO, errno.EBUSY), res
        answered, res = within(lambda: write_errno(hp / "volumes" / "v1" / "control",
                                                   "resize 2G\n"))
        assert answered and res[1][0] in (errno.EIO, errno.EBUSY), res
        # other pools still answer
        for name, fn in others.items():
            if name.startswith(("mkdir", "resize")):
                continue
            answered, _ = within(fn)
            assert answered, f"{name} did not answer after the hung pool's refresh"
        # stop is accepted while it hangs
        answered, res = within(lambda: command(hp / "state", "inactive"))
        assert answered and res[0] == "ok", res
        assert read(hp / "state").strip() == "inactive"
    finally:
        proc.send_signal(signal.SIGCONT)

    command(hp / "state", "running")
    assert read(hp / "state").strip() == "running"
    assert "v1" in os.listdir(hp / "volumes")
    # nothing of ours is left waiting in the kernel on the storagefs mount
    stuck = [pid for pid in os.listdir("/proc") if pid.isdigit() and _waits_on(pid, m.mnt)]
    assert not stuck, f"processes still in D state on the mount: {stuck}"


def _waits_on(pid: str, mnt) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state != "D":
            return False
        return str(mnt) in os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
