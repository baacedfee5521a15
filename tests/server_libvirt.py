"""A private libvirtd for the tests, started once per session (as in
contrib/bench/_libvirt.py): its own mount namespace with a tmpfs on /run and private
copies of /etc/libvirt (without the host's pools and networks), /var/lib/libvirt and
/var/cache/libvirt, reached with ``nsenter -t PID -m virsh``. Nothing of it is visible
outside that namespace except through its directories here; it is stopped by PID, and
dies with the test process (PR_SET_PDEATHSIG) when pytest is killed before finalizers.

Use: ``from server_libvirt import libvirtd  # noqa: F401`` and take the fixture
``libvirtd``: ``.virsh(*args)``, ``.config_dir`` (its /etc/libvirt/storage),
``.run_dir`` (its /run/libvirt/storage, seen through /proc/PID/root).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

URI = "qemu:///system"
PR_SET_PDEATHSIG = 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PrivateLibvirtd:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.pid = 0
        self.proc: subprocess.Popen | None = None

    @property
    def config_dir(self) -> Path:
        return self.work / "etc" / "storage"

    @property
    def run_dir(self) -> Path:
        return Path(f"/proc/{self.pid}/root/run/libvirt/storage")

    def start(self) -> None:
        w = self.work
        for d in ("lib", "cache", "run"):
            (w / d).mkdir(parents=True)
        if os.path.isdir("/etc/libvirt"):
            shutil.copytree("/etc/libvirt", w / "etc", symlinks=True)
        for d in ("etc/storage", "etc/qemu/networks/autostart"):  # no host pools or networks
            shutil.rmtree(w / d, ignore_errors=True)
        (w / "etc" / "storage").mkdir(parents=True)
        script = (f"set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/libvirt; "
                  f"mount --bind {w}/etc /etc/libvirt; mount --bind {w}/lib /var/lib/libvirt; "
                  f"mount --bind {w}/cache /var/cache/libvirt; "
                  f"exec libvirtd --pid-file {w}/run/libvirtd.pid")
        # not daemonized: unshare and sh exec it, so it is this child, and it gets
        # SIGKILL when the test process dies without finalizers (a killed pytest)
        with open(w / "libvirtd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        pid_file = w / "run" / "libvirtd.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            # its pid file is written after the private mounts: only then may virsh
            # enter its namespace (before, /run would still be the host's)
            if pid_file.exists() and \
                    subprocess.run(self.argv("uri"), capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("private libvirtd did not answer within 30 s: "
                           + (w / "libvirtd.log").read_text(errors="replace")[-500:])

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "virsh", "-q", "-c", URI, *args]

    def virsh(self, *args: str, check: bool = True, stdin: str | bytes | None = None,
              ) -> subprocess.CompletedProcess:
        text = not isinstance(stdin, bytes)
        res = subprocess.run(self.argv(*[str(a) for a in args]), input=stdin,
                             capture_output=True, text=text, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"virsh {' '.join(map(str, args))} exited {res.returncode}: "
                                 f"{res.stderr}")
        return res

    def stop(self) -> None:
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.1)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.pid = 0


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    missing = [t for t in ("libvirtd", "virsh", "unshare", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("a private libvirtd needs root")
    server = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
