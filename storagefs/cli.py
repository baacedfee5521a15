"""storagefs mount|unmount|import-libvirt|--version (SPEC "The command line")."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time

# the server, trio and lxml are imported by the commands that need them: ``unmount``
# (every service stop, every test's teardown) starts in a fifth of the time
from . import __version__, libvirt_paths
from .mounttab import UMASK, abort_connection, is_dead, lazy_unmount, mount_entry, pidfile_for

DEFAULT_STATE_DIR = "/var/lib/storagefs"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fail(reason: str) -> int:
    print(f"storagefs: {reason}", file=sys.stderr)
    return 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="storagefs",
                                description="The host's storage pools and volumes as files.")
    p.add_argument("--version", action="version", version=f"storagefs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount the tree (returns once it is ready)")
    m.add_argument("mountpoint")
    m.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    m.add_argument("--foreground", action="store_true")
    m.add_argument("--allow-other", action="store_true")
    m.add_argument("--host-id", default="",
                   help="this host's name among hosts that share pools (default: the "
                        "host name); named in the locks it holds on shared volumes")
    m.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error", "critical"])
    u = sub.add_parser("unmount", help="unmount cleanly, or recover a dead mountpoint")
    u.add_argument("mountpoint")
    i = sub.add_parser("import-libvirt",
                       help="define libvirt's persistent pools in a running storagefs")
    i.add_argument("dir", nargs="?", default=libvirt_paths.DEFAULT_CONFIG_DIR,
                   help=f"libvirt's pool definitions (default {libvirt_paths.DEFAULT_CONFIG_DIR})")
    i.add_argument("--mount", help="the storagefs mount (default: the only one there is)")
    i.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    i.add_argument("--no-start", action="store_true",
                   help="do not start the pools libvirt runs now")
    i.add_argument("--run-dir", default=libvirt_paths.DEFAULT_RUN_DIR,
                   help="libvirtd's status files: which pools it runs "
                        f"(default {libvirt_paths.DEFAULT_RUN_DIR})")
    i.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="import libvirt's pool OLD as NEW (e.g. default=libvirt-default)")
    return p.parse_args(argv)


def setup_logging(level: str, foreground: bool, state_dir: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    from .notify import JournalFormatter, stderr_is_journal

    if foreground and stderr_is_journal():
        # under systemd: journald adds time and pid, and reads <PRIORITY> prefixes
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter())
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("storagefs[%(process)d]: %(name)s: %(message)s"))
    else:
        handler = logging.FileHandler(os.path.join(state_dir, "storagefs.log"))
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


def check_mountpoint(mnt: str) -> str | None:
    if is_dead(mnt):
        entry = mount_entry(mnt)
        if entry and entry[1].startswith("fuse"):
            lazy_unmount(mnt)
            if not is_dead(mnt):
                return None
        return f"mountpoint {mnt} is a dead mount; run: storagefs unmount {mnt}"
    if not os.path.isdir(mnt):
        return f"mountpoint {mnt} does not exist or is not a directory"
    if mount_entry(mnt) is not None:
        return f"mountpoint {mnt} is busy: something is already mounted there"
    return None


def run_server(args: argparse.Namespace, mnt: str, state_dir: str, ready) -> None:
    import trio

    from .mount import serve

    trio.run(lambda: serve(mnt, state_dir, allow_other=args.allow_other, ready=ready,
                           host_id=args.host_id))


def cmd_mount(args: argparse.Namespace) -> int:
    os.umask(UMASK)  # before the log file and the daemon exist (serve() sets it too)
    mnt = os.path.abspath(args.mountpoint)
    state_dir = os.path.abspath(args.state_dir)
    reason = check_mountpoint(mnt)
    if reason:
        return fail(reason)
    if args.foreground:
        setup_logging(args.log_level, True, state_dir)
        problem: list[str] = []

        def ready(msg: str | None) -> None:
            if msg:
                problem.append(msg)

        run_server(args, mnt, state_dir, ready)
        return fail(problem[0]) if problem else 0
    return daemonize(args, mnt, state_dir)


def daemonize(args: argparse.Namespace, mnt: str, state_dir: str) -> int:
    """Fork; the parent returns once the child says the tree is ready (or why not)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode(errors="replace")
        if msg == "OK":
            print(summary(mnt, state_dir))
            return 0
        os.waitpid(pid, 0)
        return fail(msg or "the mount process died before the tree was ready")
    os.close(rfd)
    sent = False

    def ready(msg: str | None) -> None:
        nonlocal sent
        if not sent:
            os.write(wfd, b"OK" if msg is None else msg.encode())
            os.close(wfd)
            sent = True

    # every failure before the tree is ready goes through the pipe: stderr is gone
    code = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot make the state directory {state_dir}: "
                          f"{exc.strerror}") from None
        try:
            setup_logging(args.log_level, False, state_dir)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open the log: {exc.strerror}") from None
        run_server(args, mnt, state_dir, ready)
        if not sent:
            ready("storagefs stopped before the tree was ready; see the log")
    except BaseException as exc:
        with contextlib.suppress(Exception):
            logging.getLogger("storagefs").exception("storagefs failed")
        if not sent:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
                (str(exc) or type(exc).__name__)
            ready(f"storagefs failed before the tree was ready: {reason}")
        code = 1
    os._exit(code)


def summary(mnt: str, state_dir: str) -> str:
    """One line for whoever ran `storagefs mount`: where the tree is, where its state
    lives, the default pool, how to unmount."""
    pools = []
    try:
        names = sorted(n for n in os.listdir(os.path.join(mnt, "pools"))
                       if not n.startswith("by-"))
        for name in names:
            with open(os.path.join(mnt, "pools", name, "state")) as f:
                pools.append(f"{name} ({f.read().strip()})")
    except OSError:
        pass
    shown = ", ".join(pools[:5]) + (f" and {len(pools) - 5} more" if len(pools) > 5 else "")
    return (f"storagefs: mounted {mnt} (state directory {state_dir}; pools: "
            f"{shown or 'none'}); unmount with: storagefs unmount {mnt}")


def process_alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmd_unmount(args: argparse.Namespace) -> int:
    mnt = os.path.abspath(args.mountpoint)
    entry = mount_entry(mnt)
    if entry is None:
        return fail(f"{mnt} is not mounted")
    pid = None
    try:
        pid = int(pidfile_for(mnt).read_text().strip())
    except (OSError, ValueError):
        pass
    if pid is not None and not process_alive(pid):
        # the server died but its mount was not torn down (killed while the kernel waited)
        abort_connection(mnt)
        return 0 if lazy_unmount(mnt) else fail(f"cannot recover dead mount {mnt}")
    if is_dead(mnt):
        return 0 if lazy_unmount(mnt) else fail(f"cannot recover dead mount {mnt}")
    res = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
    if res.returncode != 0:
        return fail(res.stderr.strip().splitlines()[-1] if res.stderr.strip()
                    else f"cannot unmount {mnt}")
    if pid is not None:
        # the tree is unmounted; the server ends when its FUSE connection does. A copy of
        # the mount in another mount namespace keeps the connection (and the server)
        # alive: after 10 s it is asked to stop (SIGTERM ends it cleanly).
        for wait, then in ((10, signal.SIGTERM), (20, None)):
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and process_alive(pid):
                time.sleep(0.02)
            if then is None or not process_alive(pid):
                break
            with contextlib.suppress(OSError):
                os.kill(pid, then)
    return 0


def cmd_import_libvirt(args: argparse.Namespace) -> int:
    """Exit 0 when every pool is imported or was already; 2 when some were skipped."""
    from . import importer

    try:
        renames = importer.parse_renames(args.rename)
    except ValueError as exc:
        return fail(str(exc))
    if args.mount:
        mnt = args.mount
    else:
        found = importer.find_mount()
        if len(found) != 1:
            return fail("no storagefs mount found: name it with --mount" if not found else
                        f"several storagefs mounts ({', '.join(found)}): name one with --mount")
        mnt = found[0]
    if not os.path.isdir(os.path.join(mnt, "pools")):
        return fail(f"{mnt} is not a storagefs mount (it has no pools/)")
    try:
        pools, unreadable = importer.read_libvirt(args.dir, args.run_dir)
        if args.dry_run:  # a dry run says what it would do, for unreadable files too
            unreadable = [dataclasses.replace(o, action="would skip") for o in unreadable]
    except OSError as exc:
        return fail(f"cannot read libvirt's pools in {args.dir}: {exc.strerror}")
    from .backends import BACKENDS

    for o in unreadable:
        print(o.line(), flush=True)
    run = importer.Importer(mnt, dry_run=args.dry_run, start=not args.no_start,
                            renames=renames, say=lambda o: print(o.line(), flush=True))
    outcomes = [*unreadable, *run.run(pools, supported=set(BACKENDS))]
    if not outcomes:
        print(f"no pool definitions in {args.dir}")
    return 0 if all(o.ok for o in outcomes) else 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "mount":
        return cmd_mount(args)
    if args.command == "import-libvirt":
        return cmd_import_libvirt(args)
    return cmd_unmount(args)


if __name__ == "__main__":
    sys.exit(main())
