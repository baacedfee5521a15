"""Issue 3 section 1 (install and start) and 2 (embedded default): the
command line, on real mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

from mount_helpers import (
    daemon_pids_for,
    force_cleanup,
    is_mounted,
    mount_options,
    read,
    run,
    run_mount_expect_refusal,
    storagefs_cmd,
)

REPO = Path(__file__).resolve().parents[1]


def _mountinfo_count(path: Path) -> int:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == target)


def _assert_one_line_reason(rc, err):
    assert rc is not None, "mount was accepted and kept running; it must be refused"
    assert rc != 0, f"mount exited 0; it must be refused (stderr {err!r})"
    assert "Traceback" not in err, f"refusal printed a traceback:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line reason on stderr, got {err!r}"


def test_foreground_mount_serves_tree_until_unmount(mounted):
    assert os.path.ismount(mounted.mnt)
    assert mounted.proc.poll() is None
    assert read(mounted.mnt / "README").strip()
    # teardown: `storagefs unmount` exits 0, the server exits 0


def test_daemon_mount_returns_once_tree_is_ready(tmp_path):
    mnt, sd = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    out = tmp_path / "daemon.out"
    try:
        with open(out, "wb") as f:
            res = subprocess.run(
                [*storagefs_cmd(), "mount", str(mnt), "--state-dir", str(sd)],
                stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=30,
            )
        assert res.returncode == 0, out.read_text()
        # no waiting: the tree is usable the moment the command returned
        assert os.path.ismount(mnt)
        assert "default" in os.listdir(mnt / "pools")
        assert read(mnt / "pools" / "default" / "state") == "running\n"
        assert daemon_pids_for(mnt), "no storagefs process serves the daemon mount"

        un = run([*storagefs_cmd(), "unmount", str(mnt)], check=False, timeout=30)
        assert un.returncode == 0, un.stderr
        assert not is_mounted(mnt)
        deadline = time.monotonic() + 10
        while daemon_pids_for(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not daemon_pids_for(mnt), "daemon still running after unmount"
    finally:
        force_cleanup(mnt)


def test_version_prints_package_version():
    res = run([*storagefs_cmd(), "--version"], check=False)
    assert res.returncode == 0, res.stderr
    assert metadata.version("storagefs") in res.stdout + res.stderr


def test_mount_refuses_missing_mountpoint(tmp_path):
    mnt = tmp_path / "does-not-exist"
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", str(mnt), "--state-dir", str(tmp_path / "state"),
         "--foreground"], mnt)
    _assert_one_line_reason(rc, err)
    assert not mnt.exists()


def test_mount_refuses_busy_mountpoint(mounted, tmp_path):
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", str(mounted.mnt), "--state-dir", str(tmp_path / "other"),
         "--foreground"], tmp_path / "never-mounted")
    if rc is None or rc == 0:
        # a second mount got stacked on ours: take it off so teardown sees ours
        subprocess.run(["fusermount3", "-u", "-z", str(mounted.mnt)], capture_output=True)
    _assert_one_line_reason(rc, err)
    assert _mountinfo_count(mounted.mnt) == 1, "a second mount was stacked on a busy mountpoint"
    assert read(mounted.mnt / "README").strip()


def test_mount_refuses_state_dir_that_is_a_file(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sd = tmp_path / "state"
    sd.write_text("not a directory\n")
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", str(mnt), "--state-dir", str(sd), "--foreground"], mnt)
    _assert_one_line_reason(rc, err)
    assert not is_mounted(mnt)
    assert sd.read_text() == "not a directory\n"


def test_first_mount_creates_state_dir_with_default_pool(mount_factory):
    m = mount_factory(create_state=False)
    assert m.state_dir.is_dir()
    assert (m.state_dir / "images").is_dir()
    assert "default" in os.listdir(m.pools)


def test_default_pool_is_running_dir_pool_with_autostart(mounted):
    p = mounted.pool("default")
    assert read(p / "state") == "running\n"
    assert read(p / "autostart") == "yes\n"
    assert read(p / "type") == "dir\n"
    status = read(p / "status.xml")
    assert f"<path>{mounted.state_dir / 'images'}</path>" in status


def test_volume_can_be_made_right_after_first_mount(mounted):
    os.mkdir(mounted.vol("disk1"))
    assert (mounted.images / "disk1").is_file()
    assert "disk1" in os.listdir(mounted.pool() / "volumes")


def test_allow_other_lets_other_users_read_but_not_change(mount_factory):
    m = mount_factory(extra=("--allow-other",))
    assert "allow_other" in mount_options(m.mnt)
    # cwd is entered as root before dropping to nobody (tmp_path is 0700)
    as_nobody = {"cwd": m.mnt, "user": 65534, "group": 65534, "extra_groups": []}
    res = run(["cat", "README"], check=False, **as_nobody)
    assert res.returncode == 0, res.stderr
    res = run(["cat", "pools/default/state"], check=False, **as_nobody)
    assert res.stdout == "running\n", res.stderr
    res = run(["bash", "-c", "echo no > pools/default/autostart"], check=False, **as_nobody)
    assert res.returncode != 0
    assert "Permission denied" in res.stderr
    res = run(["mkdir", "pools/default/volumes/nobodys"], check=False, **as_nobody)
    assert res.returncode != 0
    assert read(m.pool() / "autostart") == "yes\n"
    assert not (m.images / "nobodys").exists()


def test_without_allow_other_other_users_see_nothing(mounted):
    as_nobody = {"cwd": mounted.mnt, "user": 65534, "group": 65534, "extra_groups": []}
    res = run(["cat", "README"], check=False, **as_nobody)
    assert res.returncode != 0
    assert "Permission denied" in res.stderr


def test_sigterm_unmounts_cleanly(mounted):
    mounted.proc.send_signal(signal.SIGTERM)
    try:
        mounted.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("storagefs ignored SIGTERM for 15 s") from None
    mounted.killed = True  # ended on purpose; the fixture must not unmount it again
    assert not is_mounted(mounted.mnt), "SIGTERM left the mountpoint mounted (dead)"


def test_service_unit_and_ci_entry_point_exist():
    unit = REPO / "contrib" / "storagefs.service"
    assert unit.is_file(), "contrib/storagefs.service missing"
    exec_start = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert exec_start and "storagefs" in exec_start[0] and " mount " in exec_start[0] + " "
    ci = REPO / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK), ".ci/run missing or not executable"


def _readme_commands() -> list[str]:
    """The shell commands of README's fenced ```sh blocks, in order."""
    blocks, current = [], None
    for line in (REPO / "README.md").read_text().splitlines():
        if current is None and line.strip() in ("```sh", "```bash", "```shell"):
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current).strip())
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_readme_first_command_installs_and_mounts_second_is_what_ci_runs():
    blocks = _readme_commands()
    assert blocks, "README has no ```sh blocks"
    first = blocks[0]
    assert "storagefs mount" in first, f"README's first command does not mount: {first!r}"
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    test_blocks = [b for b in blocks[1:] if "storagefs mount" not in b and "mkdir" not in b]
    assert test_blocks, "README has no test command after the install command"
    second = test_blocks[0]
    assert any(second in line for line in ci_lines), (
        f".ci/run does not run README's test command {second!r}: {ci_lines}")
