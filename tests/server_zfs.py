"""A ZFS daemon (zfs-fuse) for the zfs pool tests, started once per test session.

zfs-fuse allows one daemon per machine (a fixed socket, /run/zfs/zfs_socket), so the
session fixture starts one only when none runs, and fails (never skips) with the pid of
one it did not start. It runs in a session of its own with its output in a temporary
file, and is stopped by its pid at the end (SIGCONT first, should a test have left it
stopped; SIGTERM, then SIGKILL), or gets SIGTERM when the session dies without its
teardown (PR_SET_PDEATHSIG). Pools of the tests are named ``sfz<hex>`` and use
vdev files under each test's tmp_path; every pool of this session that is still
imported at the end of a test is destroyed (or exported), so zfs-fuse's cache file
(/etc/zfs/zpool.cache) keeps nothing of ours.

Use::

    pytest_plugins = ["server_zfs"]     # in the test module: zfs_server and zfs

    def test_x(zfs, mounted):           # zfs: per-test helper (pools, vdevs, zfs, zpool)
        pool = zfs.name()
        dev = zfs.vdev("128M")
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

SOCKET = "/run/zfs/zfs_socket"
START_TIMEOUT = 15.0
PR_SET_PDEATHSIG = 1


def _term_with_parent() -> None:
    """In the child: SIGTERM when the test session dies without its teardown (killed
    by a timeout), so no zfs-fuse of ours outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def zfs_fuse_pids() -> list[int]:
    """Processes named zfs-fuse on this machine (from /proc; nothing is signalled)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "zfs-fuse":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def run(argv, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, LC_ALL="C"))
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}\nstdout: {res.stdout}\n"
                             f"stderr: {res.stderr}")
    return res


class ZfsServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="storagefs-zfs-"))
        self.log_path = self.dir / "zfs-fuse.log"
        self.proc: subprocess.Popen | None = None
        #: pools of this session are named PREFIX + hex
        self.prefix = f"sfz{uuid.uuid4().hex[:4]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["zfs-fuse", "-n", "--no-kstat-mount", "-p", str(self.dir / "zfs-fuse.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_term_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zfs-fuse exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')}")
            if os.path.exists(SOCKET) and run(["zpool", "list"], check=False,
                                              timeout=10).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"zfs-fuse did not answer within {START_TIMEOUT:.0f} s")

    def imported(self) -> list[str]:
        res = run(["zpool", "list", "-H", "-o", "name"], check=False, timeout=30)
        return [n for n in res.stdout.split() if n]

    def remove_pools(self, prefix: str) -> None:
        """Destroy (or, when destroy is refused, export) our imported pools."""
        self.cont()
        for name in self.imported():
            if not name.startswith(prefix):
                continue
            if run(["zpool", "destroy", "-f", name], check=False, timeout=60).returncode:
                run(["zpool", "export", "-f", name], check=False, timeout=60)
            with contextlib.suppress(OSError):
                os.rmdir(f"/{name}")  # the mountpoint zfs-fuse made, if it is left

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self):
        """zfs-fuse stopped (SIGSTOP) while the block runs: every zfs/zpool call and
        every access to its datasets blocks until it is continued."""
        self.freeze()
        try:
            yield
        finally:
            self.cont()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.cont()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None


@pytest.fixture(scope="session")
def zfs_server():
    missing = [t for t in ("zfs-fuse", "zfs", "zpool") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (contrib/install.sh --test installs "
                    "zfs-fuse)", pytrace=False)
    others = zfs_fuse_pids()
    if others:
        pytest.fail(f"zfs-fuse already runs (pid {', '.join(map(str, others))}) and was not "
                    "started by this test session: zfs-fuse allows one daemon per machine; "
                    "run the zfs tests when it is gone", pytrace=False)
    server = ZfsServer()
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.remove_pools(server.prefix)
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


class ZfsHelper:
    """Per test: unique pool names, vdev files, zfs/zpool calls; cleans up after."""

    def __init__(self, server: ZfsServer, tmp_path: Path) -> None:
        self.server = server
        self.dir = tmp_path / "vdevs"
        self.dir.mkdir(exist_ok=True)
        self.prefix = f"{server.prefix}{uuid.uuid4().hex[:4]}"
        self._n = 0

    def name(self) -> str:
        self._n += 1
        return f"{self.prefix}{self._n}"

    def vdev(self, size: str = "128M") -> str:
        self._n += 1
        path = self.dir / f"vdev{self._n}"
        run(["truncate", "-s", size, path])
        return str(path)

    def zfs(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return run(["zfs", *args], check=check)

    def zpool(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return run(["zpool", *args], check=check)

    def get(self, dataset: str, prop: str) -> int:
        out = self.zfs("get", "-Hp", "-o", "value", prop, dataset).stdout.strip()
        return int(out) if out.isdigit() else 0

    def exists(self, dataset: str) -> bool:
        return self.zfs("get", "-H", "-o", "value", "type", dataset,
                        check=False).returncode == 0

    def imported(self, pool: str) -> bool:
        return pool in self.server.imported()

    def datasets(self, pool: str) -> list[str]:
        res = self.zfs("list", "-H", "-r", "-t", "all", "-o", "name", pool, check=False)
        return res.stdout.split()

    def cleanup(self) -> None:
        self.server.remove_pools(self.prefix)


@pytest.fixture
def zfs(zfs_server, tmp_path):
    helper = ZfsHelper(zfs_server, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()
