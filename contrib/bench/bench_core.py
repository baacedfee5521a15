#!/usr/bin/env python3
"""Benchmark the core (issue 11): reading generated files against the floor of this stack,
tmpfs and virsh; large pools; a pool whose storage hangs.

Run as root from the repository root (nothing is installed; libvirt and bindfs are used
when present):

    .venv/bin/python contrib/bench/bench_core.py [--volumes 10000] [--large 100000]
        [--no-virsh] [--no-large] [--no-hang] [--workdir /tmp]

One run prints one table. Rows compare storagefs with, side by side in the same run:
- the floor: `_floorfs.py`, a minimal pyfuse3 filesystem serving a snapshot of the same
  tree from memory (static bytes, keep_cache, the same entry/attr timeouts, attributes
  with readdir); `floor no-open` is the same with FUSE's no_open (see _floorfs.py);
- tmpfs holding a copy of the same tree;
- virsh (a private libvirtd, see _libvirt.py) on a dir pool of the same files.
Ratio = storagefs / baseline (below 1: storagefs is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _floorfs import snapshot
from _libvirt import (
    Libvirt,
    mount_storagefs,
    print_log,
    run,
    run_in,
    storagefs_cli,
    timed,
)

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
VOLUME_FILES = ("status.xml", "capacity", "allocation", "format", "key")


class Table:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, what: str, base: str, n: int, sf: float, b: float | None,
            target: str = "", unit: str = "s") -> None:
        ratio = f"{sf / b:.2f}" if b else "-"
        met = ""
        if target and b:
            op, value = target.split()
            r = sf / b
            met = "yes" if (r <= float(value) if op == "<=" else r >= float(value)) else "NO"
        fmt = (lambda v: f"{v * 1e3:.3f} ms") if unit == "ms" else (lambda v: f"{v:.3f}")
        self.rows.append([what, base, str(n), fmt(sf), fmt(b) if b else "-", ratio,
                          target, met])
        print("  ".join(self.rows[-1]), file=sys.stderr, flush=True)

    def note(self, what: str, value: str, target: str = "", met: str = "") -> None:
        self.rows.append([what, "", "", value, "", "", target, met])
        print(f"  {what}: {value} {target} {met}", file=sys.stderr, flush=True)

    def print(self) -> None:
        head = ["measure", "baseline", "N", "storagefs", "baseline", "ratio", "target", "met"]
        table = [head, *self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for k, r in enumerate(table):
            print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
            if k == 0:
                print("  ".join("-" * w for w in widths))


def make_files(d: Path, start: int, stop: int, size: int = GIB) -> None:
    for i in range(start, stop):
        fd = os.open(d / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)


def wait_listed(vols: Path, n: int, timeout: float = 900) -> None:
    t0 = time.monotonic()
    while True:
        try:
            if len(os.listdir(vols)) >= n:
                return
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{vols} never listed {n} volumes")
        time.sleep(0.05)


def per_open_read(path: Path, loops: int) -> float:
    """Seconds per open + read + close of one file, in this process (median of 5 rounds)."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(loops):
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
        rounds.append((time.perf_counter() - t0) / loops)
    return statistics.median(rounds)


def read_all(vols: Path) -> float:
    """One process reads every status.xml and one-value file of every volume."""
    code = ("import os,sys;d=sys.argv[1];fs=sys.argv[2:]\n"
            "for v in os.listdir(d):\n"
            "  for f in fs:\n"
            "    with open(os.path.join(d,v,f),'rb') as h: h.read()\n")
    return timed([sys.executable, "-c", code, str(vols), *VOLUME_FILES])


def find_stat(root: Path) -> float:
    return timed(["find", str(root), "-printf", "%s %m %y\n"])


def ls_l(d: Path) -> float:
    timed(["ls", "-l", str(d)])
    return statistics.median(timed(["ls", "-l", str(d)]) for _ in range(3))


def copy_to(entries_root: Path, dst: Path) -> None:
    """The tree under entries_root (a floor or storagefs mount) copied onto dst (tmpfs)."""
    run(["cp", "-a", "--no-preserve=ownership", f"{entries_root}/.", str(dst)], timeout=900)


class Floor:
    def __init__(self, snap: Path, mnt: Path, no_open: bool = False) -> None:
        mnt.mkdir(exist_ok=True)
        argv = [sys.executable, str(HERE / "_floorfs.py"), str(snap), str(mnt)]
        if no_open:
            argv.append("--no-open")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("floor filesystem did not start")
        self.mnt = mnt

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)])


def rss_of_mount(mnt: Path) -> int:
    """VmRSS in bytes of the storagefs process serving mnt."""
    want = os.fsencode(str(mnt))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if want in args and any(b"storagefs" in a for a in args[:3]):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def bench_reads(args, work: Path, stack: contextlib.ExitStack, t: Table) -> None:
    target = work / "pool"
    target.mkdir()
    n = args.volumes
    make_files(target, 0, n)
    mnt, state = mount_storagefs(work, stack)
    pool = mnt / "pools/bench"
    pool.mkdir()
    (pool / "config.xml").write_text(
        f"<pool type='dir'><name>bench</name><target><path>{target}</path></target></pool>\n")
    (pool / "control").write_text("start\n")
    vols = pool / "volumes"
    wait_listed(vols, n)
    time.sleep(2)  # let background details settle
    snap = work / "snapshot.pickle"
    snapshot(mnt, snap)
    floor = Floor(snap, work / "floor")
    stack.callback(floor.stop)
    noopen = Floor(snap, work / "floor-noopen", no_open=True)
    stack.callback(noopen.stop)
    tmpfs = work / "tmpfs"
    tmpfs.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=2g", "sfbench", str(tmpfs)])
    stack.callback(lambda: subprocess.run(["umount", "-l", str(tmpfs)]))
    copy_to(floor.mnt, tmpfs)

    one = "pools/bench/volumes/f000000/status.xml"
    loops = 2000
    sf = per_open_read(mnt / one, loops)
    t.add("open+read one status.xml", "floor", 1, sf, per_open_read(floor.mnt / one, loops),
          "<= 1.3", unit="ms")
    t.add("open+read one status.xml", "floor no-open", 1, sf,
          per_open_read(noopen.mnt / one, loops), unit="ms")
    t.add("open+read one status.xml", "tmpfs", 1, sf, per_open_read(tmpfs / one, loops),
          unit="ms")

    rel = Path("pools/bench/volumes")
    sf = read_all(mnt / rel)
    t.add(f"read {len(VOLUME_FILES)} files of every volume", "floor", n, sf,
          read_all(floor.mnt / rel), "<= 1.5")
    t.add(f"read {len(VOLUME_FILES)} files of every volume", "tmpfs", n, sf,
          read_all(tmpfs / rel))
    lv = None
    if not args.no_virsh and all(shutil.which(c) for c in ("virsh", "libvirtd", "nsenter")):
        lv = Libvirt(work / "libvirt")
        stack.callback(lv.stop)
        lv.start()
        lvpool = lv.work / "lsv"
        lvpool.mkdir()
        run(lv.virsh("pool-define-as", "lsv", "dir", "--target", str(target)))
        run(lv.virsh("pool-start", "lsv"), timeout=900)
        listing = lv.virsh("vol-list", "lsv", "--details")
        timed(listing)
        t.add(f"read {len(VOLUME_FILES)} files of every volume", "virsh vol-list --details",
              n, sf, statistics.median(timed(listing) for _ in range(3)), "<= 0.5")

    sf = find_stat(mnt)
    t.add("find+stat of the whole tree", "floor", n, sf, find_stat(floor.mnt), "<= 1.5")
    t.add("find+stat of the whole tree", "tmpfs", n, sf, find_stat(tmpfs))
    sf = ls_l(vols)
    t.add("ls -l volumes/", "tmpfs", n, sf, ls_l(tmpfs / rel), "<= 1.5")
    t.add("ls -l volumes/", "floor", n, sf, ls_l(floor.mnt / rel))


def bench_large(args, work: Path, stack: contextlib.ExitStack, t: Table) -> None:
    cli = storagefs_cli()
    n = args.large
    mnt, state, target = work / "lmnt", work / "lstate", work / "lpool"
    for d in (mnt, state, target):
        d.mkdir()
    make_files(target, 0, n)
    # define the pool once, then measure a mount that brings it back (autostart)
    run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=120)
    pool = mnt / "pools/large"
    pool.mkdir()
    (pool / "config.xml").write_text(
        f"<pool type='dir'><name>large</name><target><path>{target}</path></target></pool>\n")
    (pool / "autostart").write_text("yes\n")
    (pool / "control").write_text("start\n")
    wait_listed(pool / "volumes", n)
    run([*cli, "unmount", str(mnt)], timeout=120)
    t0 = time.perf_counter()
    run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=300)
    stack.callback(lambda: subprocess.run([*cli, "unmount", str(mnt)]))
    stack.callback(lambda: print_log(state / "storagefs.log"))
    wait_listed(pool / "volumes", n)
    mount_s = time.perf_counter() - t0
    t.note(f"mount with {n} volumes (until listed)", f"{mount_s:.2f} s", "<= 3 s",
           "yes" if mount_s <= 3 else "NO")
    t0 = time.perf_counter()
    (pool / "control").write_text("refresh\n")
    refresh_s = time.perf_counter() - t0
    t.note(f"refresh of {n} volumes", f"{refresh_s:.2f} s", "<= 5 s",
           "yes" if refresh_s <= 5 else "NO")
    rss = rss_of_mount(mnt)
    t.note(f"RSS with {n} volumes", f"{rss / 1e6:.0f} MB", "<= 300 MB",
           "yes" if rss <= 300e6 else "NO")
    tmpfs = work / "ltmpfs"
    tmpfs.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1g,nr_inodes=0", "sfbench", str(tmpfs)])
    stack.callback(lambda: subprocess.run(["umount", "-l", str(tmpfs)]))
    make_files(tmpfs, 0, n)
    t.add("ls -l volumes/", "tmpfs", n, ls_l(pool / "volumes"), ls_l(tmpfs), "<= 2")


def timed_call(fn, limit: float) -> float:
    """Seconds fn() took in a helper thread, or `limit` when it did not answer in time."""
    done = threading.Event()

    def work() -> None:
        with contextlib.suppress(OSError):
            fn()
        done.set()

    t0 = time.perf_counter()
    threading.Thread(target=work, daemon=True).start()
    done.wait(limit)
    return min(time.perf_counter() - t0, limit)


def bench_hang(args, work: Path, stack: contextlib.ExitStack, t: Table) -> None:
    if not shutil.which("bindfs"):
        t.note("hung pool", "skipped: bindfs not installed (apt-get install bindfs)")
        return
    cli = storagefs_cli()
    mnt, state, src, dst = work / "hmnt", work / "hstate", work / "hsrc", work / "hdst"
    for d in (mnt, state, src, dst):
        d.mkdir()
    make_files(src, 0, 10, size=1 << 20)
    bindfs = subprocess.Popen(["bindfs", "-f", str(src), str(dst)])
    stack.callback(lambda: (bindfs.send_signal(signal.SIGCONT), bindfs.terminate(),
                            subprocess.run(["fusermount3", "-u", "-z", str(dst)])))
    for _ in range(100):
        if os.path.ismount(dst):
            break
        time.sleep(0.05)
    env = dict(os.environ, STORAGEFS_TOOL_TIMEOUT="5")
    subprocess.run([*cli, "mount", str(mnt), "--state-dir", str(state)], check=True, env=env)
    stack.callback(lambda: subprocess.run([*cli, "unmount", str(mnt)]))
    hp = mnt / "pools/hung"
    hp.mkdir()
    (hp / "config.xml").write_text(
        f"<pool type='dir'><name>hung</name><target><path>{dst}</path></target></pool>\n")
    (hp / "control").write_text("start\n")
    wait_listed(hp / "volumes", 10)
    bindfs.send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    # the hung pool's own files first: they answer from what storagefs last knew
    own = {
        "cat hung/status.xml": lambda: (hp / "status.xml").read_bytes(),
        "cat hung/capacity": lambda: (hp / "capacity").read_bytes(),
        "cat hung volume status.xml": lambda: (hp / "volumes/f000000/status.xml").read_bytes(),
        "ls -l hung/volumes/": lambda: [os.lstat(p) for p in (hp / "volumes").iterdir()],
    }
    others = {
        "ls pools/": lambda: os.listdir(mnt / "pools"),
        "cat default/status.xml": lambda: (mnt / "pools/default/status.xml").read_bytes(),
        "ls devices/": lambda: os.listdir(mnt / "devices"),
        "mkdir in default": lambda: os.mkdir(mnt / "pools/default/volumes/hangprobe"),
        "rmdir in default": lambda: os.rmdir(mnt / "pools/default/volumes/hangprobe"),
    }
    worst = 0.0
    for name, fn in [*own.items(), *others.items()]:
        took = timed_call(fn, 5.0)
        worst = max(worst, took)
        t.note(f"hung pool: {name}", f"{took * 1e3:.1f} ms", "<= 100 ms",
               "yes" if took <= 0.1 else "NO")
    # an operation that must touch the storage: other paths keep answering meanwhile
    blocked = threading.Thread(target=lambda: timed_call(
        lambda: (hp / "control").write_text("refresh\n"), 30.0), daemon=True)
    blocked.start()
    time.sleep(0.3)
    for name, fn in others.items():
        took = timed_call(fn, 5.0)
        worst = max(worst, took)
        t.note(f"hung pool, refresh pending: {name}", f"{took * 1e3:.1f} ms", "<= 100 ms",
               "yes" if took <= 0.1 else "NO")
    bindfs.send_signal(signal.SIGCONT)
    t.note("hung pool: worst of the above", f"{worst * 1e3:.1f} ms", "<= 100 ms",
           "yes" if worst <= 0.1 else "NO")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=10000)
    p.add_argument("--large", type=int, default=100000)
    p.add_argument("--no-virsh", action="store_true")
    p.add_argument("--no-large", action="store_true")
    p.add_argument("--no-hang", action="store_true")
    p.add_argument("--no-reads", action="store_true")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root (mounts tmpfs and FUSE)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sfcore-", dir=args.workdir or "/tmp")).resolve()
    t = Table()
    def body(stack: contextlib.ExitStack) -> None:
        for skip, part in ((args.no_reads, bench_reads), (args.no_hang, bench_hang),
                           (args.no_large, bench_large)):
            if not skip:
                with contextlib.ExitStack() as own:  # each part's mounts go before the next
                    part(args, work, own, t)

    code = run_in(work, body, t.print)
    if code == 0:
        print("ratio = storagefs / baseline; targets are issue 11's.")
    return code


if __name__ == "__main__":
    sys.exit(main())
