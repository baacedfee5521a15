"""Wiring: state directory, core, FUSE session, background tasks, signals."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from .core import Registry
from .core.events import MAX_READERS
from .devices import DeviceIndex
from .fuse.operations import Operations
from .fuse.render import README
from .metrics import status_line
from .names import systemd_escape_path
from .notify import Notifier
from .state import StateDir

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/storagefs")
#: the umask storagefs and the tools it runs work with: a file it makes is never
#: readable by others unless given a mode explicitly (SPEC "Never trust guest bytes")
UMASK = 0o077
#: pyfuse3's worker tasks: its default, plus one for every reader of events that may
#: wait in read() (each holds a task until its next line)
MAX_TASKS = 99 + MAX_READERS


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


async def _signals(core: Registry, notifier: Notifier) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for signum in sigs:
            log.info("signal %d: unmounting", signum)
            notifier.stopping(f"signal {signum}: unmounting")
            await close_events(core)
            pyfuse3.terminate()


def load_devices() -> DeviceIndex | None:
    """The device index for devices/ (a failure leaves the rest of the tree working)."""
    try:
        index = DeviceIndex()
        index.load()
        return index
    except Exception:
        log.exception("cannot read the host's devices; devices/ is left out")
        return None


async def close_events(core: Registry, grace: float = 1.0) -> None:
    """Reads waiting for events end (end of file), and their readers get a moment to
    close the file while the tree still answers (cat's close() would fail after)."""
    core.events.close()
    with trio.move_on_after(grace):
        while core.events.handles:
            await trio.sleep(0.02)


def _device_listener(core: Registry, ops: Operations):
    """What a batch of uevents changed: the kernel's caches, the event stream, and
    sources/ (listed again soon)."""

    def changed(added: set[str], removed: set[str], modified: set[str]) -> None:
        ops.inval.devices_changed(added, removed, modified)
        core.events.devices(core.devices, added, removed, modified)
        core.sources.devices_changed()

    return changed


#: the collector's thresholds while serving. Python's defaults (700, 10, 10) run a full
#: collection every few hundred thousand allocations: with 100,000 volumes (a million
#: objects) each one walks them all, 40% of the first listing of such a pool (measured:
#: 983 ms -> 619 ms). Cyclic garbage is still collected, less often.
GC_THRESHOLDS = (50_000, 20, 10)


async def make_core(state_dir: str, *, devices: bool = False,
                    mountpoint: str | None = None, host_id: str = "") -> Registry:
    """The core over a state directory, loaded (pools defined and started again);
    raises StorageError when the state directory cannot be used."""
    state = StateDir(state_dir)
    core = Registry(state, mountpoint=canonical(mountpoint) if mountpoint else None,
                    host_id=host_id)
    try:
        await core.load()
    except BaseException:
        state.close()
        raise
    core.devices = load_devices() if devices else None
    return core


async def serve(mountpoint: str, state_dir: str, *, allow_other: bool,
                ready: Callable[[str | None], None], host_id: str = "") -> None:
    """Mount and serve until unmounted; ``ready(None)`` once the tree is usable,
    ``ready(reason)`` if it cannot start."""
    os.umask(UMASK)
    gc.set_threshold(*GC_THRESHOLDS)
    # first: it takes $NOTIFY_SOCKET out of the environment before any host tool runs
    notifier = Notifier()
    try:
        core = await make_core(state_dir, devices=True, mountpoint=mountpoint,
                               host_id=host_id)
    except Exception as exc:
        notifier.send(f"STATUS=cannot start: {exc}")
        ready(str(exc))
        return
    state = core.state
    ops = Operations(core, README)
    pidfile = pidfile_for(mountpoint)  # before mounting: realpath stats the mountpoint
    options = set(pyfuse3.default_options) | {"fsname=storagefs", "subtype=storagefs"}
    if allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except Exception as exc:
        notifier.send(f"STATUS=cannot mount {mountpoint}: {exc}")
        ready(f"cannot mount {mountpoint}: {exc}")
        state.close()
        return
    clean = False
    try:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        async with trio.open_nursery() as nursery:
            await core.run_background(nursery)
            nursery.start_soon(_signals, core, notifier)
            if core.devices is not None:
                nursery.start_soon(core.devices.run, _device_listener(core, ops))
            ops.inval.enabled = True
            ready(None)
            notifier.ready(status_line(core))
            nursery.start_soon(notifier.run, lambda: status_line(core),
                               lambda: os.listdir(mountpoint))
            await pyfuse3.main(max_tasks=MAX_TASKS)
            clean = True
            notifier.stopping("unmounted")
            nursery.cancel_scope.cancel()
    finally:
        core.events.close()
        ops.inval.enabled = False
        pyfuse3.close(unmount=clean)
        state.close()
        with contextlib.suppress(OSError):
            pidfile.unlink()
        log.info("storagefs on %s stopped", mountpoint)
