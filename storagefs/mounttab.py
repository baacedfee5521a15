"""Where a storagefs mount is and what state it is in, from the kernel's tables: the
pid file, /proc/self/mounts, the FUSE connection's abort file. Light on purpose: the
``unmount`` command and the tests' teardowns import only this, not the server."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

from .names import systemd_escape_path

RUN_DIR = Path("/run/storagefs")
#: the umask storagefs and the tools it runs work with: a file it makes is never
#: readable by others unless given a mode explicitly (SPEC "Never trust guest bytes")
UMASK = 0o077


def canonical(mountpoint: str) -> str:
    """realpath of the mountpoint without stat'ing the mountpoint itself (a dead or wedged
    FUSE mount would make that fail or hang): only its parent is resolved."""
    path = os.path.abspath(mountpoint).rstrip("/") or "/"
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def pidfile_for(mountpoint: str) -> Path:
    return RUN_DIR / f"{systemd_escape_path(canonical(mountpoint))}.pid"


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(source, fstype) of the mount at mountpoint, from /proc/self/mounts."""
    target = canonical(mountpoint)
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mp = parts[1].encode().decode("unicode_escape")
                if mp == target:
                    found = (parts[0], parts[2])
    return found


def is_dead(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def abort_connection(mountpoint: str) -> bool:
    """Abort the FUSE connection of a mount whose server is gone but whose kernel side
    still waits (a killed server stuck in the kernel): requests then fail at once."""
    target = canonical(mountpoint)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                minor = fields[2].split(":")[1]
                with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as ab:
                    ab.write("1")
                return True
    return False


def lazy_unmount(mountpoint: str) -> bool:
    for argv in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        with contextlib.suppress(OSError):
            if subprocess.run(argv, capture_output=True).returncode == 0:
                return True
    return False
