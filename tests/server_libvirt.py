"""A private libvirtd for the tests, started once per session (as in
contrib/bench/_libvirt.py): its own mount namespace with a tmpfs on /run and private
copies of /etc/libvirt (without the host's pools and networks), /var/lib/libvirt and
/var/cache/libvirt, reached with ``nsenter -t PID -m virsh``. Nothing of it is visible
outside that namespace except through its directories here; it is stopped by PID.

Use: ``from server_libvirt import libvirtd  # noqa: F401`` and take the fixture
``libvirtd``: ``.virsh(*args)``, ``.config_dir`` (its /etc/libvirt/storage),
``.run_dir`` (its /run/libvirt/storage, seen through /proc/PID/root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

URI = "qemu:///system"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class PrivateLibvirtd:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.pid = 0

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
                  f"exec libvirtd -d --pid-file {w}/run/libvirtd.pid")
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       check=True, capture_output=True, timeout=60)
        for _ in range(100):
            with contextlib.suppress(OSError, ValueError):
                self.pid = int((w / "run" / "libvirtd.pid").read_text())
                break
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(self.argv("uri"), capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("private libvirtd did not answer within 30 s")

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
