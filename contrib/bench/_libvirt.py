"""Shared helpers for the benchmarks in contrib/bench/: subprocess timing, mount checks,
the storagefs CLI, a mount of it and its log summary, a benchmark's work directory, and
a private libvirtd (own mount namespace: tmpfs on /run/libvirt, private /etc/libvirt,
/var/lib/libvirt, /var/cache/libvirt) reached with nsenter + virsh. Import it from a
script in this directory (`from _libvirt import ...`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

URI = "qemu:///system"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore


def timed(cmd: list[str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, text=True, input=stdin, stdout=subprocess.PIPE)
    return time.perf_counter() - t0


def mounted_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Libvirt:
    """A private libvirtd in its own mount namespace, driven through nsenter + virsh."""

    def __init__(self, work: Path) -> None:
        self.work, self.pid = work, 0
        self.made_run_dir = not os.path.isdir("/run/libvirt")

    def start(self) -> None:
        w = self.work
        for d in ("lib", "cache", "run"):
            (w / d).mkdir(parents=True)
        shutil.copytree("/etc/libvirt", w / "etc", symlinks=True)
        for d in ("etc/storage", "etc/qemu/networks/autostart"):  # no host pools or networks
            shutil.rmtree(w / d, ignore_errors=True)
        script = (f"set -e; mkdir -p /run/libvirt; mount -t tmpfs tmpfs /run/libvirt; "
                  f"mount --bind {w}/etc /etc/libvirt; mount --bind {w}/lib /var/lib/libvirt; "
                  f"mount --bind {w}/cache /var/cache/libvirt; "
                  f"exec libvirtd -d --pid-file {w}/run/libvirtd.pid")
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], timeout=60)
        self.pid = int((w / "run/libvirtd.pid").read_text())
        for _ in range(300):
            if subprocess.run(self.virsh("uri"), capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("private libvirtd did not answer within 30 s")

    def virsh(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "virsh", "-q", "-c", URI, *args]

    def pool(self, name: str, target: Path) -> None:
        target.mkdir()
        run(self.virsh("pool-define-as", name, "dir", "--target", str(target)))
        run(self.virsh("pool-start", name))

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            for _ in range(150):
                if not alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = 0
        if self.made_run_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/run/libvirt")


def storagefs_cli() -> list[str]:
    exe = Path(sys.executable).parent / "storagefs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "storagefs"]


def mount_storagefs(work: Path, stack: contextlib.ExitStack, timeout: float = 120,
                    ) -> tuple[Path, Path]:
    """storagefs mounted at WORK/mnt with its state in WORK/state; unmounted when the
    stack closes, then its log summed up. Returns (mountpoint, state directory)."""
    cli = storagefs_cli()
    mnt, state = work / "mnt", work / "state"
    mnt.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=timeout)
    stack.callback(lambda: print_log(state / "storagefs.log"))
    stack.callback(lambda: subprocess.run([*cli, "unmount", str(mnt)]))
    return mnt, state


def run_in(work: Path, body: Callable[[contextlib.ExitStack], None],
           show: Callable[[], None]) -> int:
    """A benchmark's body, run with an ExitStack in WORK: Ctrl-C cleans up and says so
    (130); the results so far are always shown, and WORK removed unless something is
    still mounted under it."""
    try:
        with contextlib.ExitStack() as stack:
            body(stack)
    except KeyboardInterrupt:
        print("interrupted: cleaned up; partial results below", file=sys.stderr)
        return 130
    finally:
        show()
        left = mounted_under(work)
        if left:
            print(f"NOT removing {work}: still mounted: {left}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def print_log(log: Path) -> None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        print(f"storagefs log: {log} absent (logging to syslog?)")
        return
    bad = [ln for ln in lines if any(w in ln for w in ("ERROR", "CRITICAL", "Traceback"))]
    warn = [ln for ln in lines if "WARNING" in ln]
    print(f"storagefs log: {len(lines)} lines, {len(bad)} errors, {len(warn)} warnings")
    for ln in (bad + warn)[:10]:
        print(f"  {ln[:200]}")
