"""Issue 3 section 9 (nothing lost) on real mounts, and section 10
(concurrency): `ls` and `cat` never wait behind a long volume operation."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
from mount_helpers import (
    GiB,
    command,
    define_pool,
    is_mounted,
    ls_names,
    pool_xml,
    qemu_info,
    read,
    run,
    run_mount_expect_refusal,
    storagefs_cmd,
    volume_xml,
    write,
)

# ---------------------------------------------------------------- nothing lost


def test_definitions_survive_remount(mounted, tmp_path):
    p1 = define_pool(mounted, "p1", tmp_path / "p1")
    p2 = define_pool(mounted, "p2", tmp_path / "p2", start=False)
    configs = {n: read(mounted.pool(n) / "config.xml") for n in ("default", "p1", "p2")}
    uuids = {n: read(mounted.pool(n) / "uuid") for n in ("default", "p1", "p2")}
    command(p1 / "autostart", "yes")
    assert read(p2 / "autostart") == "no\n"
    mounted.remount()
    assert {"default", "p1", "p2"} <= ls_names(mounted.pools)
    for n in ("default", "p1", "p2"):
        assert read(mounted.pool(n) / "config.xml") == configs[n], n
        assert read(mounted.pool(n) / "uuid") == uuids[n], n
    assert read(mounted.pool("p1") / "autostart") == "yes\n"
    assert read(mounted.pool("p2") / "autostart") == "no\n"
    assert read(mounted.pool("p2") / "state") == "inactive\n"


def test_autostart_pools_run_again_after_restart(mounted, tmp_path):
    p1 = define_pool(mounted, "p1", tmp_path / "p1", start=False)
    command(p1 / "autostart", "yes")
    assert read(p1 / "state") == "inactive\n"
    mounted.remount()
    assert read(mounted.pool("p1") / "state") == "running\n"
    assert read(mounted.pool("default") / "state") == "running\n"


def test_default_pool_autostart_off_is_kept(mounted):
    command(mounted.pool() / "autostart", "no")
    command(mounted.pool() / "state", "inactive")
    mounted.remount()
    assert read(mounted.pool() / "autostart") == "no\n"
    assert read(mounted.pool() / "state") == "inactive\n"


def test_volumes_are_rediscovered_from_storage(mounted):
    os.mkdir(mounted.vol("disk1"))
    os.mkdir(mounted.vol("q.qcow2"))
    write(mounted.vol("disk1") / "config.xml", volume_xml("disk1", 2 * GiB))
    mounted.stop()
    run(["qemu-img", "create", "-q", "-f", "qcow2", mounted.images / "offline.qcow2", "3G"])
    mounted.start()
    assert {"disk1", "q.qcow2", "offline.qcow2"} <= ls_names(mounted.pool() / "volumes")
    assert read(mounted.vol("disk1") / "capacity") == f"{2 * GiB}\n"
    assert read(mounted.vol("q.qcow2") / "format") == "qcow2\n"
    assert read(mounted.vol("offline.qcow2") / "capacity") == f"{3 * GiB}\n"


def test_undefined_pool_stays_undefined(mounted, tmp_path):
    p1 = define_pool(mounted, "p1", tmp_path / "p1", start=False)
    os.rmdir(p1)
    mounted.remount()
    assert "p1" not in ls_names(mounted.pools)
    assert (tmp_path / "p1").is_dir()


def test_scratch_files_are_not_persisted(mounted):
    p = mounted.pool()
    (p / "scratch.tmp").write_text("temp\n")
    mounted.remount()
    assert "scratch.tmp" not in ls_names(mounted.pool())


def test_pending_pool_dir_is_not_persisted_as_a_pool(mounted):
    os.mkdir(mounted.pool("pending"))
    mounted.remount()
    assert not (mounted.pools / "pending" / "status.xml").exists()


def test_second_storagefs_on_same_state_dir_is_refused(mounted, tmp_path):
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", str(mnt2), "--state-dir", str(mounted.state_dir),
         "--foreground"], mnt2)
    assert rc is not None and rc != 0, "a second storagefs on the same state dir was accepted"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not is_mounted(mnt2)
    assert read(mounted.pool() / "state") == "running\n"


def test_second_storagefs_refused_in_daemon_mode_too(mounted, tmp_path):
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", str(mnt2), "--state-dir", str(mounted.state_dir)], mnt2)
    assert rc is not None and rc != 0, err
    assert not is_mounted(mnt2)


def test_unmount_recovers_mountpoint_of_killed_process(mounted):
    mounted.kill()
    with_error = None
    try:
        os.stat(mounted.mnt / "pools")
    except OSError as e:
        with_error = e.errno
    assert with_error == errno.ENOTCONN
    mounted.recover()
    mounted.start()
    assert read(mounted.pool() / "state") == "running\n"


def test_definition_written_before_kill_is_kept(mounted, tmp_path):
    p1 = define_pool(mounted, "p1", tmp_path / "p1", start=False)
    new = pool_xml("p1", tmp_path / "p1-new")
    write(p1 / "config.xml", new)
    mounted.kill()
    mounted.recover()
    mounted.start()
    assert read(mounted.pool("p1") / "config.xml") == new


@pytest.mark.log_allows("left by an interrupted write")
def test_kill_during_definitions_leaves_old_or_new(mounted, tmp_path):
    docs = [pool_xml("p1", tmp_path / f"t{i}") for i in range(40)]
    os.mkdir(mounted.pool("p1"))
    write(mounted.pool("p1") / "config.xml", docs[0])

    def writer():
        for doc in docs[1:]:
            try:
                write(mounted.pool("p1") / "config.xml", doc)
            except OSError:
                return

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.02)
    mounted.kill()
    t.join(timeout=30)
    mounted.recover()
    mounted.start()
    assert read(mounted.pool("p1") / "config.xml") in docs


def test_state_dir_holds_no_temp_leftovers_after_remount(mounted, tmp_path):
    define_pool(mounted, "p1", tmp_path / "p1")
    mounted.remount()
    leftovers = [p for p in mounted.state_dir.rglob("*")
                 if p.is_file() and (p.name.endswith(".tmp") or ".tmp" in p.name)
                 and mounted.images not in p.parents]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- concurrency


SHIM = """#!/bin/sh
# slows a host tool down for images whose name contains "slow", to make a long
# volume operation observable; everything else runs at full speed
if [ -e "{flag}" ]; then
  for a in "$@"; do
    case "$a" in *slow*) touch "{marker}"; sleep {delay};; esac
  done
fi
exec {real} "$@"
"""


SLOWED_TOOLS = ("qemu-img", "fallocate", "truncate", "dd")


def _slow_env(tmp_path, delay=1.5):
    """PATH with shims that delay the host tools for images named *slow*."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    marker = tmp_path / "shim-used"
    flag = tmp_path / "shim-armed"
    for tool in SLOWED_TOOLS:
        real = shutil.which(tool)
        if not real:
            continue
        shim = shim_dir / tool
        shim.write_text(SHIM.format(marker=marker, flag=flag, delay=delay, real=real))
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}"}
    return env, marker, flag


class _Timed(threading.Thread):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.error, self.end = fn, None, None

    def run(self):
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001
            self.error = e
        self.end = time.monotonic()


def _probe_while(m, long_op: _Timed, marker):
    """Run ls -l of volumes/ and cat status.xml once the long op is under way;
    return when each finished."""
    deadline = time.monotonic() + 10
    while not marker.exists() and long_op.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not marker.exists():
        long_op.join(timeout=120)
        tools = ", ".join(SLOWED_TOOLS)
        pytest.skip(f"the operation ran no host tool through PATH ({tools}): its duration "
                    "cannot be stretched, so the ordering cannot be observed")
    ends = {}
    res = subprocess.run(["ls", "-l", str(m.pool() / "volumes")], capture_output=True,
                         text=True, timeout=30)
    ends["ls"] = time.monotonic()
    assert res.returncode == 0, res.stderr
    res = subprocess.run(["cat", str(m.pool() / "status.xml")], capture_output=True,
                         text=True, timeout=30)
    ends["cat"] = time.monotonic()
    assert res.returncode == 0 and "<pool" in res.stdout, res.stderr
    return ends


# The long operation is a write to a volume's config.xml: a slow `mkdir` in
# volumes/ would not do, since the kernel holds that directory's lock for the
# whole mkdir and readdir/lookup there wait for it whatever storagefs does.


WRITER = ("import os, sys\n"
          "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)\n"
          "os.write(fd, sys.argv[2].encode())\n"
          "os.close(fd)\n")


def _write_in_other_process(path, doc):
    """The long write runs in its own process: a FUSE file open in this one
    would be flushed by every fork+exec of the probes (close-on-exec sends
    FUSE a FLUSH for it), tying the probes to the write's own handle."""
    res = subprocess.run([sys.executable, "-c", WRITER, str(path), doc],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def _slow_volume(m, flag):
    os.mkdir(m.vol("slow.qcow2"))
    flag.touch()  # from now on the host tools take long for slow.qcow2


def _assert_not_blocked(m, long_op, marker):
    ends = _probe_while(m, long_op, marker)
    os.mkdir(m.vol("other.raw"))  # another volume of the same pool does not wait either
    ends["mkdir of another volume"] = time.monotonic()
    long_op.join(timeout=120)
    assert long_op.error is None, long_op.error
    for what, end in ends.items():
        assert end < long_op.end, f"{what} finished only after the long volume operation"


def test_ls_and_status_do_not_wait_for_slow_resize(mount_factory, tmp_path):
    env, marker, flag = _slow_env(tmp_path)
    m = mount_factory(env=env)
    _slow_volume(m, flag)
    doc = volume_xml("slow.qcow2", 2 * GiB, fmt="qcow2")
    long_op = _Timed(lambda: _write_in_other_process(m.vol("slow.qcow2") / "config.xml", doc))
    long_op.start()
    _assert_not_blocked(m, long_op, marker)
    assert qemu_info(m.images / "slow.qcow2")["virtual-size"] == 2 * GiB


def test_ls_and_status_do_not_wait_for_slow_preallocation(mount_factory, tmp_path):
    env, marker, flag = _slow_env(tmp_path)
    m = mount_factory(env=env)
    _slow_volume(m, flag)
    doc = volume_xml("slow.qcow2", 2 * GiB, fmt="qcow2", allocation=2 * GiB)
    long_op = _Timed(lambda: _write_in_other_process(m.vol("slow.qcow2") / "config.xml", doc))
    long_op.start()
    _assert_not_blocked(m, long_op, marker)
