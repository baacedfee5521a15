"""Wiring: state directory, core, FUSE session, background tasks, signals."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from .core import Registry
from .core.events import MAX_READERS
from .devices import DeviceIndex
from .fuse.operations import Operations
from .fuse.render import README
from .metrics import status_line
from .mounttab import RUN_DIR, UMASK, canonical, pidfile_for
from .notify import Notifier
from .state import StateDir

log = logging.getLogger(__name__)

#: pyfuse3's worker tasks: its default, plus one for every reader of events that may
#: wait in read() (each holds a task until its next line)
MAX_TASKS = 99 + MAX_READERS


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
