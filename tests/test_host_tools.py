"""Issue 7, "Host tools that fail or hang", on real mounts.

storagefs runs every host tool through storagefs/hostcmd.py with a time limit.
The limits in the code are long (qemu-img create 60 s, or 3600 s when it
preallocates; qemu-img resize and snapshot 600 s; qemu-img info 30 s; parted
120 s; LVM 120 s), so these tests start storagefs with STORAGEFS_TOOL_TIMEOUT
(which caps every limit) set to a few seconds, and a PATH whose first
directory holds shims: a shim runs the real tool unless its "armed" file
exists and its arguments match, in which case it writes its pid to a file and
hangs (`exec sleep 3600`), so that a hung call never touches real storage.

A missing tool is simulated with a PATH made of symlinks to every executable
of the real PATH except the ones left out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loopdev import LoopSet, blkid, skip_reason
from mount_helpers import (
    MOUNT_TIMEOUT,
    STORAGEFS_POOL_NS,
    GiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    qemu_info,
    read,
    run,
    volume_xml,
    write,
    write_errno,
)

MiB = 1024**2
CAP = 3  # STORAGEFS_TOOL_TIMEOUT for the hang tests, in seconds
# a refused operation must come back within the limit plus this much (process
# start, SIGTERM grace, FUSE round trips)
SLACK = 4.0
# an unrelated request answered while a tool hangs must take less than this
QUICK = 1.0

SHIM = """#!/bin/sh
# storagefs test shim for {tool}: hangs while {arm} exists and the arguments match
echo "$$ $*" >> {calls}
if [ -e {arm} ]; then
  case " $* " in
    {pattern}) echo $$ >> {pids}; {hang};;
  esac
fi
exec {real} "$@"
"""
HANG = "exec sleep 3600"
# a tool that hangs in a child process of its own (as `mount` does in
# mount.nfs): the child's pid is what must be gone afterwards
HANG_IN_CHILD = "sleep 3600 & echo $! >> {pids}; wait"


class Shims:
    """A directory of shims first on PATH; .arm()/.disarm() switch hanging on."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "shims"
        self.dir.mkdir()
        self.arm_file = tmp_path / "shims-armed"
        self.calls = tmp_path / "shim-calls"
        self.pids = tmp_path / "shim-pids"
        self.calls.touch()

    def add(self, tool: str, match: str = "", hang: str = HANG) -> None:
        real = shutil.which(tool)
        if real is None:
            pytest.skip(f"{tool} is not installed on this host")
        pattern = f'*" {match} "*' if match else "*"
        text = SHIM.format(tool=tool, arm=self.arm_file, calls=self.calls, pids=self.pids,
                           pattern=pattern, hang=hang.format(pids=self.pids), real=real)
        shim = self.dir / tool
        shim.write_text(text)
        shim.chmod(0o755)

    def env(self, cap: float | None = CAP, path: str | None = None) -> dict:
        env = {**os.environ, "PATH": f"{self.dir}:{path or os.environ['PATH']}"}
        env.pop("STORAGEFS_TOOL_TIMEOUT", None)
        if cap is not None:
            env["STORAGEFS_TOOL_TIMEOUT"] = str(cap)
        return env

    def arm(self) -> None:
        self.arm_file.touch()

    def disarm(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.arm_file.unlink()

    def hung_pids(self) -> list[int]:
        try:
            return [int(x) for x in self.pids.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_hanging(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.hung_pids():
            assert time.monotonic() < deadline, (
                f"no shim started hanging within {timeout} s; calls:\n{self.calls.read_text()}")
            time.sleep(0.01)

    def kill_leftovers(self) -> None:
        """Teardown: the hung processes our storagefs started, by pid, if still there."""
        for pid in self.hung_pids():
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def shims(tmp_path):
    s = Shims(tmp_path)
    yield s
    s.disarm()
    s.kill_leftovers()


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH (one directory) with a symlink to every executable of $PATH but `missing`."""
    farm = tmp_path / ("path-without-" + "-".join(missing))
    farm.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not d or not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = farm / name
            if name in missing or os.path.lexists(link):
                continue
            src = os.path.join(d, name)
            if os.path.isfile(src) and os.access(src, os.X_OK):
                os.symlink(src, link)
    for tool in missing:
        assert shutil.which(tool, path=str(farm)) is None
    return str(farm)


class Timed(threading.Thread):
    """Run fn in a thread, keeping its exception and when it ended."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.error, self.result, self.end = fn, None, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001
            self.error = e
        self.end = time.monotonic()


def errno_of(fn) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def timed(what: str, fn, took: dict) -> None:
    t0 = time.monotonic()
    fn()
    took[what] = time.monotonic() - t0


WRITER = ("import os, sys\n"
          "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)\n"
          "try:\n"
          "    os.write(fd, sys.argv[2].encode())\n"
          "except OSError as e:\n"
          "    print(e.errno)\n"
          "os.close(fd)\n")


def write_in_other_process(path: Path, doc: str) -> int | None:
    """The errno of a write done by another process (None when it succeeded): a FUSE
    file open in this process would be flushed by the probes' fork+exec."""
    res = subprocess.run([sys.executable, "-c", WRITER, str(path), doc],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return int(res.stdout) if res.stdout.strip() else None


def image_files(m) -> set[str]:
    return set(os.listdir(m.images))


def capacity(vol: Path) -> int:
    return int(read(vol / "capacity"))


# ------------------------------------------------------------------ hung qemu-img


def test_hung_qemu_img_create_ends_in_eio_with_the_reason(mount_factory, shims):
    shims.add("qemu-img", match="create")
    m = mount_factory(env=shims.env())
    before = image_files(m)
    shims.arm()
    t0 = time.monotonic()
    code = errno_of(lambda: os.mkdir(m.vol("x.qcow2")))
    took = time.monotonic() - t0
    print(f"mkdir x.qcow2 with a hung qemu-img: {errno.errorcode.get(code)} after {took:.1f} s "
          f"(limit {CAP} s)")
    assert code == errno.EIO
    assert CAP - 0.5 <= took <= CAP + SLACK
    line = assert_one_error_line(m.pool())
    assert "qemu-img did not finish within 3 s" in line, line
    assert "x.qcow2" in line, line
    # a refused mkdir changes nothing: no volume, no half-made image, no hung process
    assert "x.qcow2" not in ls_names(m.pool() / "volumes")
    assert image_files(m) == before
    [pid] = shims.hung_pids()
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"the hung qemu-img (pid {pid}) is still running"
    # the same name works once qemu-img answers again
    shims.disarm()
    os.mkdir(m.vol("x.qcow2"))
    assert qemu_info(m.images / "x.qcow2")["format"] == "qcow2"


def test_mount_serves_other_requests_while_qemu_img_create_hangs(mount_factory, shims,
                                                                 tmp_path):
    shims.add("qemu-img", match="create")
    m = mount_factory(env=shims.env(cap=6))
    other = define_pool(m, "other", tmp_path / "other")
    shims.arm()
    # mkdir holds the kernel's lock on default/volumes for its whole duration, so
    # the requests below are about everything but that one directory
    hung = Timed(lambda: os.mkdir(m.vol("h.qcow2")))
    hung.start()
    shims.wait_hanging()
    took: dict[str, float] = {}
    timed("ls pools", lambda: ls_names(m.pools), took)
    timed("cat README", lambda: read(m.mnt / "README"), took)
    timed("cat default/status.xml", lambda: read(m.pool() / "status.xml"), took)
    timed("cat default/state", lambda: read(m.pool() / "state"), took)
    timed("ls other/volumes", lambda: ls_names(other / "volumes"), took)
    timed("mkdir other/volumes/r.raw", lambda: os.mkdir(other / "volumes" / "r.raw"), took)
    timed("cat other/volumes/r.raw/status.xml",
          lambda: read(other / "volumes" / "r.raw" / "status.xml"), took)
    timed("echo refresh > other/control", lambda: command(other / "control", "refresh"), took)
    answered = time.monotonic()
    hung.join(timeout=30)
    print("while qemu-img create hung: " + ", ".join(f"{k} {v * 1000:.0f} ms"
                                                      for k, v in took.items()))
    assert isinstance(hung.error, OSError) and hung.error.errno == errno.EIO, hung.error
    assert answered < hung.end, "the other requests waited for the hung qemu-img"
    slow = {k: v for k, v in took.items() if v > QUICK}
    assert not slow, f"requests slower than {QUICK} s while qemu-img hung: {slow}"
    assert "r.raw" in ls_names(other / "volumes")
    assert "did not finish" in assert_one_error_line(m.pool())


def test_same_pool_serves_while_qemu_img_resize_hangs(mount_factory, shims):
    shims.add("qemu-img", match="resize")
    m = mount_factory(env=shims.env(cap=6))
    os.mkdir(m.vol("a.qcow2"))
    assert capacity(m.vol("a.qcow2")) == GiB
    # a guest wrote to it: a document now resizes it (a pristine one would be re-made)
    run(["qemu-io", "-f", "qcow2", "-c", "write 0 64k", m.images / "a.qcow2"])
    shims.arm()
    doc = volume_xml("a.qcow2", 2 * GiB, fmt="qcow2")
    hung = Timed(lambda: write_in_other_process(m.vol("a.qcow2") / "config.xml", doc))
    hung.start()
    shims.wait_hanging()
    took: dict[str, float] = {}
    timed("ls default/volumes", lambda: ls_names(m.pool() / "volumes"), took)
    timed("cat default/status.xml", lambda: read(m.pool() / "status.xml"), took)
    timed("mkdir default/volumes/r.raw", lambda: os.mkdir(m.vol("r.raw")), took)
    timed("cat r.raw/status.xml", lambda: read(m.vol("r.raw") / "status.xml"), took)
    timed("cat a.qcow2/status.xml", lambda: read(m.vol("a.qcow2") / "status.xml"), took)
    answered = time.monotonic()
    hung.join(timeout=30)
    print("while qemu-img resize hung: " + ", ".join(f"{k} {v * 1000:.0f} ms"
                                                      for k, v in took.items()))
    assert hung.error is None, hung.error
    assert hung.result == errno.EIO, f"the write got {hung.result}, want EIO"
    assert answered < hung.end, "the other requests waited for the hung qemu-img"
    slow = {k: v for k, v in took.items() if v > QUICK}
    assert not slow, f"requests slower than {QUICK} s while qemu-img hung: {slow}"
    line = assert_one_error_line(m.vol("a.qcow2"))
    assert "qemu-img did not finish within 6 s" in line, line
    # the refused write changed nothing
    assert qemu_info(m.images / "a.qcow2")["virtual-size"] == GiB
    assert capacity(m.vol("a.qcow2")) == GiB


def test_hung_tool_is_killed_with_its_children(mount_factory, shims):
    """A tool that hangs in a child of its own (mount -> mount.nfs, a wrapper
    script ...) must not leave that child running after the time limit."""
    shims.add("qemu-img", match="create", hang=HANG_IN_CHILD)
    m = mount_factory(env=shims.env())
    shims.arm()
    assert errno_of(lambda: os.mkdir(m.vol("x.qcow2"))) == errno.EIO
    shell, child = shims.hung_pids()  # the shim's own pid, then its child's
    deadline = time.monotonic() + 2
    while (_alive(child) or _alive(shell)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(shell), f"the hung tool (pid {shell}) still runs"
    assert not _alive(child), (
        f"the hung tool's child (pid {child}) still runs after storagefs gave up on the tool: "
        "only the direct child is killed, not its process group")


def test_hung_qemu_img_info_during_refresh_keeps_the_known_capacity(mount_factory, shims):
    """`qemu-img info` (the probe of a non-raw image) hangs during refresh: the
    capacity shown must not become 0, and why must be on record."""
    shims.add("qemu-img", match="info")
    m = mount_factory(env=shims.env())
    os.mkdir(m.vol("a.qcow2"))
    assert capacity(m.vol("a.qcow2")) == GiB
    subprocess.run(["qemu-img", "resize", "-q", str(m.images / "a.qcow2"), str(2 * GiB)],
                   check=True, timeout=60)
    shims.arm()
    t0 = time.monotonic()
    code, _ = write_errno(m.pool() / "control", "refresh\n")
    took = time.monotonic() - t0
    shown = capacity(m.vol("a.qcow2"))
    errors = read(m.pool() / "error") + read(m.vol("a.qcow2") / "error")
    print(f"refresh with a hung qemu-img info: {errno.errorcode.get(code, 'ok')} after "
          f"{took:.1f} s; capacity shown {shown}; error files {errors!r}")
    assert took <= CAP + SLACK
    assert shown in (GiB, 2 * GiB), f"capacity reads {shown} after the probe timed out"
    assert "did not finish" in errors, "the timed-out probe is not on record in any error file"


def test_mount_is_ready_while_qemu_img_info_hangs(mount_factory, shims):
    """A restart must not wait for image probes that hang (default limits: 30 s
    per `qemu-img info`, four at a time): the tree is ready within the mount
    timeout of the test helpers, and the volume is listed."""
    shims.add("qemu-img", match="info")
    m = mount_factory(env=shims.env(cap=None))
    for i in range(5):
        os.mkdir(m.vol(f"q{i}.qcow2"))
    m.stop()
    shims.arm()
    t0 = time.monotonic()
    try:
        m.start()
    except AssertionError as e:
        m.killed = True  # Mount.start already tore it down: no second complaint at teardown
        pytest.fail(f"restart with a hung qemu-img info for 5 qcow2 images: not ready within "
                    f"{MOUNT_TIMEOUT:g} s ({str(e).splitlines()[0]})", pytrace=False)
    took = time.monotonic() - t0
    print(f"restart with a hung qemu-img info for 5 qcow2 images: ready after {took:.1f} s")
    assert took < MOUNT_TIMEOUT
    assert {f"q{i}.qcow2" for i in range(5)} <= ls_names(m.pool() / "volumes")


# ------------------------------------------------------------------ missing qemu-img


def test_missing_qemu_img_gives_enotsup_not_a_traceback(mount_factory, tmp_path):
    m = mount_factory(env={**os.environ, "PATH": path_without(tmp_path, "qemu-img")})
    before = image_files(m)
    code = errno_of(lambda: os.mkdir(m.vol("x.qcow2")))
    assert code == errno.ENOTSUP, errno.errorcode.get(code)
    line = assert_one_error_line(m.pool())
    assert "qemu-img not installed" in line, line
    assert "x.qcow2" not in ls_names(m.pool() / "volumes")
    assert image_files(m) == before
    # what needs no qemu-img still works: raw volumes, their resize
    os.mkdir(m.vol("r.raw"))
    command(m.vol("r.raw") / "control", "resize 2G")
    assert capacity(m.vol("r.raw")) == 2 * GiB
    # turning the raw volume into qcow2 needs qemu-img: refused, nothing changed
    code, call = write_errno(m.vol("r.raw") / "config.xml", volume_xml("r.raw", 2 * GiB, "qcow2"))
    assert (code, call) == (errno.ENOTSUP, "write"), (errno.errorcode.get(code), call)
    assert "qemu-img not installed" in assert_one_error_line(m.vol("r.raw"))
    assert read(m.vol("r.raw") / "format") == "raw\n"
    assert os.stat(m.images / "r.raw").st_size == 2 * GiB


def test_existing_qcow2_volume_keeps_its_capacity_without_qemu_img(mount_factory, tmp_path):
    """libvirt reads a qcow2 image's virtual size from its header when it probes;
    a host without qemu-img must not show a qcow2 volume with capacity 0."""
    m = mount_factory()
    os.mkdir(m.vol("a.qcow2"))
    write(m.vol("a.qcow2") / "config.xml", volume_xml("a.qcow2", 3 * GiB, fmt="qcow2"))
    assert capacity(m.vol("a.qcow2")) == 3 * GiB
    m.stop()
    m.env = {**os.environ, "PATH": path_without(tmp_path, "qemu-img")}
    m.start()
    assert "a.qcow2" in ls_names(m.pool() / "volumes")
    assert read(m.vol("a.qcow2") / "format") == "qcow2\n"
    assert capacity(m.vol("a.qcow2")) == 3 * GiB


# ------------------------------------------------------------------ disk and logical pools


@pytest.fixture
def loops(tmp_path):
    reason = skip_reason("parted", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def disk_pool(m, name: str, device: str) -> Path:
    p = m.pool(name)
    os.mkdir(p)
    write(p / "config.xml",
          f"<pool type='disk'>\n  <name>{name}</name>\n  <source>\n"
          f"    <device path='{device}'/>\n    <format type='gpt'/>\n  </source>\n"
          f"  <target>\n    <path>/dev</path>\n  </target>\n</pool>\n")
    return p


def logical_pool(m, name: str, vg: str, device: str) -> Path:
    p = m.pool(name)
    os.mkdir(p)
    write(p / "config.xml",
          f"<pool type='logical'>\n  <name>{name}</name>\n  <source>\n"
          f"    <device path='{device}'/>\n    <name>{vg}</name>\n"
          f"    <format type='lvm2'/>\n  </source>\n"
          f"  <target>\n    <path>/dev/{vg}</path>\n  </target>\n"
          f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_POOL_NS}'"
          f" capacity='8M'/>\n</pool>\n")
    return p


def test_hung_parted_ends_build_in_eio_and_leaves_the_disk_alone(mount_factory, shims, loops):
    shims.add("parted", match="mklabel")
    m = mount_factory(env=shims.env())
    dev = loops.make("32M")
    p = disk_pool(m, "dp", dev.path)
    shims.arm()
    t0 = time.monotonic()
    code, call = write_errno(p / "control", "build\n")
    took = time.monotonic() - t0
    print(f"build with a hung parted: {errno.errorcode.get(code)} after {took:.1f} s")
    assert (code, call) == (errno.EIO, "write")
    assert took <= CAP + SLACK
    assert "parted did not finish within 3 s" in assert_one_error_line(p)
    assert "PTTYPE" not in blkid(dev.path), "the disk got a label though the build failed"
    assert read(p / "state") == "inactive\n"
    assert ls_names(m.pools) >= {"dp", "default"}


def test_missing_parted_gives_enotsup(mount_factory, tmp_path, loops):
    m = mount_factory(env={**os.environ, "PATH": path_without(tmp_path, "parted")})
    dev = loops.make("32M")
    p = disk_pool(m, "dp", dev.path)
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.ENOTSUP, "write"), (errno.errorcode.get(code), call)
    assert "parted not installed" in assert_one_error_line(p)
    assert "PTTYPE" not in blkid(dev.path)


LVM_TOOLS = ("lvm", "pvcreate", "pvremove", "pvs", "vgcreate", "vgremove", "vgs", "vgchange",
             "lvcreate", "lvremove", "lvs", "lvchange", "lvresize")


@pytest.fixture
def lvm_loops(tmp_path):
    reason = skip_reason("pvcreate", "vgcreate", "pvs", "vgs", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as made:
        yield made


def test_hung_vgcreate_ends_build_in_eio_and_undoes_pvcreate(mount_factory, shims, lvm_loops):
    shims.add("vgcreate")
    m = mount_factory(env=shims.env())
    dev = lvm_loops.make("32M")
    vg = f"sfs_hang_{os.getpid()}"
    p = logical_pool(m, "lp", vg, dev.path)
    shims.arm()
    t0 = time.monotonic()
    code, call = write_errno(p / "control", "build\n")
    took = time.monotonic() - t0
    print(f"build with a hung vgcreate: {errno.errorcode.get(code)} after {took:.1f} s")
    assert (code, call) == (errno.EIO, "write")
    assert took <= 2 * (CAP + SLACK)  # pvcreate ran for real first
    assert "did not finish within 3 s" in assert_one_error_line(p)
    assert blkid(dev.path).get("TYPE") != "LVM2_member", "pvcreate was not undone"
    assert read(p / "state") == "inactive\n"


def test_missing_lvm_tools_give_enotsup(mount_factory, tmp_path, lvm_loops):
    m = mount_factory(env={**os.environ, "PATH": path_without(tmp_path, *LVM_TOOLS)})
    dev = lvm_loops.make("32M")
    p = logical_pool(m, "lp", f"sfs_nolvm_{os.getpid()}", dev.path)
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.ENOTSUP, "write"), (errno.errorcode.get(code), call)
    line = assert_one_error_line(p)
    assert "not installed" in line and any(t in line for t in LVM_TOOLS), line
    assert blkid(dev.path).get("TYPE") != "LVM2_member"


def test_shim_path_is_first_on_path(shims):
    """Guard for the tests above: the shims directory wins over the real tools."""
    shims.add("qemu-img")
    env = shims.env()
    assert shutil.which("qemu-img", path=env["PATH"]) == str(shims.dir / "qemu-img")
    assert stat.S_IMODE(os.stat(shims.dir / "qemu-img").st_mode) == 0o755
