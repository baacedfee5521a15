"""Shared fixtures. The real-mount fixture `mounted` runs `storagefs mount
--foreground` on a mountpoint and state directory under tmp_path, waits for
the tree while checking the process is alive, and tears down with `storagefs
unmount` (exit 0 required from it and from the server). Any "Traceback" or
"internal error" in the server's log fails the test (a bad input must never
reach pyfuse3 as an exception, nor end in EIO without a reason), and so does any
WARNING or ERROR line the test does not declare with ``log_allows``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mount_helpers  # noqa: E402
from mount_helpers import FUSE_AVAILABLE, TEST_DEADLINE, Mount, is_mounted  # noqa: E402

# Each storagefs server a test starts is a new Python process: with
# PYTHONDONTWRITEBYTECODE set (as in this CI) every start compiled all of storagefs
# again, 0.25 s of the 0.45 s a mount took. The servers (and the CLI) share compiled
# modules kept in a directory of this session instead (the checkout stays as it is).
_PYCACHE = tempfile.mkdtemp(prefix="storagefs-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE

MOUNT_MODULES = {
    "test_mount_cli",
    "test_pools",
    "test_volumes",
    "test_writers",
    "test_errors",
    "test_persistence",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "mount: runs a real storagefs mount (needs /dev/fuse)")
    config.addinivalue_line(
        "markers", "log_allows(*patterns): WARNING/ERROR lines of the storagefs log that this "
        "test provokes on purpose (regular expressions searched in each line)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module else ""
        if name in MOUNT_MODULES or "mounted" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mount)
            if not FUSE_AVAILABLE:
                item.add_marker(pytest.mark.skip(reason="/dev/fuse is absent"))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.when == "call":
        # the log check reads what the test itself provoked: lines logged later, while
        # fixtures torn down before the mount (loop devices detached under a running
        # pool) take its storage away, are not the test's doing
        for m in mount_helpers.ACTIVE_MOUNTS:
            try:
                m.log_mark = m.log_path.stat().st_size
            except OSError:
                m.log_mark = None


#: WARNING/ERROR lines any test may cause: the host's own state, not storagefs's doing
ALWAYS_ALLOWED = (
    r"no kernel uevent monitor",
    r"uevents were lost",
    # this machine's kernel has no device-mapper: logical pools run degraded (README)
    r"this kernel has no device-mapper",
    r"cannot activate the logical volumes of",
    # qemu-img's LUKS iteration timing fails on a loaded machine; storagefs retries
    r"qemu-img could not time the key derivation",
)
LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def unexpected_log_lines(log: str, node) -> list[str]:
    """Lines at WARNING or above that neither the test's log_allows marker nor
    ALWAYS_ALLOWED expects (a log check on every mount, SPEC: nothing goes wrong
    silently, and nothing is logged as wrong that is not)."""
    allowed = [re.compile(p) for p in ALWAYS_ALLOWED]
    for mark in node.iter_markers("log_allows"):
        allowed += [re.compile(p) for p in mark.args]
    return [line for line in log.splitlines()
            if LEVEL.match(line) and not any(a.search(line) for a in allowed)]


def _finish(m: Mount, request) -> list[str]:
    """Tear one mount down; return the problems found."""
    problems = []
    m.disarm_watchdog()
    if getattr(m, "watchdog_fired", False):
        problems.append(f"test still running after {TEST_DEADLINE:.0f} s: storagefs was killed "
                        "to unblock it (a FUSE call hung)")
    try:
        if m.alive():
            m.stop()
        elif m.proc is not None and not getattr(m, "killed", False):
            problems.append(f"storagefs exited unexpectedly with {m.proc.returncode}")
            m.cleanup()
        elif is_mounted(m.mnt):
            m.cleanup()
    except AssertionError as e:
        problems.append(str(e).split("\nlog:\n")[0])
        m.cleanup()
    except Exception as e:  # noqa: BLE001 - failure path must always clean up
        problems.append(f"teardown error: {e!r}")
        m.cleanup()
    log = m.log()
    if "Traceback" in log:
        problems.append(f"'Traceback' in the storagefs log {m.log_path}")
    if "internal error" in log:
        # an exception that was not a StorageError reached the FUSE layer (EIO, no
        # error line): every refusal must end in a fitting errno and its reason
        problems.append(f"'internal error' in the storagefs log {m.log_path}")
    checked, mark = log, getattr(m, "log_mark", None)
    if mark is not None:
        try:
            checked = m.log_path.read_bytes()[:mark].decode(errors="replace")
        except OSError:
            pass
    unexpected = unexpected_log_lines(checked, request.node)
    if unexpected:
        problems.append(f"unexpected WARNING/ERROR lines in the storagefs log {m.log_path} "
                        "(mark the test with log_allows(PATTERN) if it provokes them):\n  "
                        + "\n  ".join(unexpected[:10]))
    failed = getattr(request.node, "rep_call", None)
    if problems or (failed is not None and failed.failed):
        print(f"----- storagefs log {m.log_path} (last 200 lines) -----")
        print("\n".join(log.splitlines()[-200:]))
    return problems


@pytest.fixture
def mount_factory(tmp_path, request):
    """Make Mount objects (custom env, mountpoint names, a state dir that does
    not exist yet ...); every one is torn down and checked like `mounted`."""
    made: list[Mount] = []

    def make(env: dict | None = None, name: str = "mnt", create_state: bool = True,
             start: bool = True, extra: tuple[str, ...] = ()) -> Mount:
        m = Mount(tmp_path, env=env, name=name)
        if create_state:
            m.state_dir.mkdir(exist_ok=True)
        if start:
            m.start(*extra)  # raises with the log if the server died or never got ready
        made.append(m)
        mount_helpers.ACTIVE_MOUNTS.append(m)
        m.arm_watchdog(TEST_DEADLINE)
        return m

    yield make

    mount_helpers.ACTIVE_MOUNTS.clear()
    problems = []
    for m in reversed(made):
        problems += _finish(m, request)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def mounted(mount_factory):
    """A fresh storagefs mount: .mnt, .state_dir, .proc, .log_path, .remount(), .kill()."""
    return mount_factory()
