#!/usr/bin/env python3
"""Benchmark a storagefs dir pool against tmpfs, plain files and libvirt (issue 3, "Benchmark").

Run as root from the repository root (nothing is installed; libvirt is used when present):

    /work/main/.venv/bin/python contrib/bench/bench_dir_pool.py \\
        [--counts 1000,10000] [--creates 1000] [--no-virsh] [--workdir /tmp]

It mounts storagefs and a tmpfs in a temp dir, starts a private libvirtd (own mount
namespace: tmpfs on /run/libvirt, private /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt)
when `virsh` and `libvirtd` exist, prints one table, and tears everything down, also on
Ctrl-C. Ratio = storagefs seconds / baseline seconds (below 1: storagefs is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _libvirt import (
    Libvirt,
    print_log,
    run,
    run_in,
    storagefs_cli,
    timed,
)

GIB = 1 << 30


@dataclass
class Row:
    op: str
    base_op: str
    n: int
    sf: float
    base: float
    target: float | None = None  # maximum allowed ratio

    def cells(self) -> list[str]:
        if not self.base:
            return [self.op, self.base_op, str(self.n), f"{self.sf:.3f}", "-", "-", "", ""]
        ratio = self.sf / self.base
        met = "" if self.target is None else ("yes" if ratio <= self.target else "NO")
        tgt = "" if self.target is None else f"<= {self.target:g}"
        return [self.op, self.base_op, str(self.n), f"{self.sf:.3f}", f"{self.base:.3f}",
                f"{ratio:.3f}", tgt, met]


def ls_times(path: Path) -> tuple[float, float]:
    """`ls -l` as a subprocess: (first run, median of the next 3)."""
    cold = timed(["ls", "-l", str(path)])
    return cold, statistics.median(timed(["ls", "-l", str(path)]) for _ in range(3))


def shell_loop(body: str, n: int) -> float:
    """Seconds for ONE bash running `body` (which may use $i) n times."""
    return timed(["bash", "-ec", f"for i in $(seq {n}); do {body}; done"])


def make_files(d: Path, start: int, stop: int) -> None:
    """Sparse 1 GiB files f00000... (mode 0600), like a new raw volume."""
    for i in range(start, stop):
        fd = os.open(d / f"f{i:05d}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.ftruncate(fd, GIB)
        os.close(fd)


def refresh_until(pool: Path, n: int, timeout: float = 600) -> float:
    """Write `refresh` to the pool's control and wait until volumes/ lists n entries."""
    t0 = time.perf_counter()
    (pool / "control").write_text("refresh\n")
    while len(os.listdir(pool / "volumes")) != n:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{pool}/volumes never showed {n} entries")
        time.sleep(0.02)
    return time.perf_counter() - t0


def bench(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack,
          rows: list[Row]) -> None:
    """Fill rows as results come in (so a failure still shows what was measured)."""
    mnt, state, tmpfs = work / "mnt", work / "state", work / "tmpfs"
    for d in (mnt, state, tmpfs, work / "disk-trunc", work / "sf-create"):
        d.mkdir()
    cli = storagefs_cli()
    run(["mount", "-t", "tmpfs", "-o", "size=1g", "sfbench", str(tmpfs)])
    stack.callback(lambda: subprocess.run(["umount", str(tmpfs)]))
    run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=120)
    stack.callback(lambda: print_log(state / "storagefs.log"))
    stack.callback(lambda: subprocess.run([*cli, "unmount", str(mnt)]))
    lv: Libvirt | None = None
    if not args.no_virsh and all(shutil.which(c) for c in ("virsh", "libvirtd", "nsenter")):
        lv = Libvirt(work / "libvirt")
        stack.callback(lv.stop)
        lv.start()
    elif not args.no_virsh:
        print("note: virsh/libvirtd not found: skipping the libvirt baseline", file=sys.stderr)

    # 2. creating volumes: mkdir in one shell loop vs truncate, vs virsh
    n = args.creates
    bench_pool = mnt / "pools/bench"
    bench_pool.mkdir()
    (bench_pool / "config.xml").write_text(
        f"<pool type='dir'><name>bench</name><target><path>{work}/sf-create</path>"
        "</target></pool>\n")
    (bench_pool / "control").write_text("start\n")
    sf = shell_loop(f"mkdir {bench_pool}/volumes/v$i", n)
    check_count(work / "sf-create", n, "storagefs mkdir")
    (tmpfs / "trunc").mkdir()
    for where in (tmpfs / "trunc", work / "disk-trunc"):
        kind = "tmpfs" if where.parent == tmpfs else "disk"
        rows.append(Row("mkdir volumes/v$i", f"truncate -s 1G ({kind})", n, sf,
                        shell_loop(f"truncate -s 1G {where}/v$i", n)))
    if lv:
        lv.pool("c1", lv.work / "c1")
        # --allocation 0: sparse like mkdir/truncate (virsh's default preallocates 1 GiB each)
        create = ["vol-create-as", "c1", "a$i", "1G", "--allocation", "0", "--format", "raw"]
        base = shell_loop(" ".join(lv.virsh(*create)) + " >/dev/null", n)
        check_count(lv.work / "c1", n, "virsh vol-create-as")
        rows.append(Row("mkdir volumes/v$i", "virsh vol-create-as x1 each", n, sf, base))
        lv.pool("c2", lv.work / "c2")
        cmds = "".join(f"vol-create-as c2 b{i} 1G --allocation 0 --format raw\n"
                       for i in range(n))
        base = timed(lv.virsh(), stdin=cmds)
        check_count(lv.work / "c2", n, "virsh on stdin")
        rows.append(Row("mkdir volumes/v$i", "one virsh, cmds on stdin", n, sf, base, 0.5))
        lv.pool("ls", lv.work / "ls")

    # 1. ls -l of volumes/ vs tmpfs (and virsh vol-list --details)
    images, default = state / "images", mnt / "pools/default"
    (tmpfs / "ls").mkdir()
    have = 0
    for n in args.counts:
        make_files(images, have, n)
        make_files(tmpfs / "ls", have, n)
        refresh = refresh_until(default, n)
        sf_cold, sf_warm = ls_times(default / "volumes")
        tf_cold, tf_warm = ls_times(tmpfs / "ls")
        rows += [Row("ls -l volumes/ cold", "ls -l tmpfs cold", n, sf_cold, tf_cold, 3),
                 Row("ls -l volumes/ warm", "ls -l tmpfs warm", n, sf_warm, tf_warm, 3)]
        if lv:
            make_files(lv.work / "ls", have, n)
            vref = timed(lv.virsh("pool-refresh", "ls"))
            listing = lv.virsh("vol-list", "ls", "--details")
            v_cold = timed(listing)
            v_warm = statistics.median(timed(listing) for _ in range(3))
            got = len(run(listing).stdout.strip().splitlines())
            if got != n:
                print(f"warning: virsh vol-list shows {got} volumes, not {n}", file=sys.stderr)
            rows += [Row("refresh until listed", "virsh pool-refresh", n, refresh, vref),
                     Row("ls -l volumes/ cold", "vol-list --details cold", n, sf_cold, v_cold,
                         0.1),
                     Row("ls -l volumes/ warm", "vol-list --details warm", n, sf_warm, v_warm,
                         0.1)]
        else:
            rows.append(Row("refresh until listed", "(no baseline)", n, refresh, 0.0))
        have = n


def check_count(d: Path, n: int, what: str) -> None:
    got = len(os.listdir(d))
    if got != n:
        print(f"warning: {what}: {got} files in {d}, expected {n}", file=sys.stderr)


def print_table(rows: list[Row]) -> None:
    head = ["storagefs operation", "baseline", "N", "storagefs s", "baseline s", "ratio",
            "target", "met"]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for k, r in enumerate(table):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="1000,10000", help="volume counts for ls -l")
    p.add_argument("--creates", type=int, default=1000, help="volumes to create per method")
    p.add_argument("--no-virsh", action="store_true", help="skip the libvirt baseline")
    p.add_argument("--workdir", default=None, help="parent of the temp dir (default /tmp)")
    args = p.parse_args()
    args.counts = sorted(int(c) for c in args.counts.split(","))
    if os.geteuid() != 0:
        print("run as root (mounts tmpfs and FUSE, starts libvirtd)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sfbench-", dir=args.workdir or "/tmp")).resolve()
    rows: list[Row] = []
    code = run_in(work, lambda stack: bench(args, work, stack, rows),
                  lambda: print_table(rows))
    if code:
        return code
    print("ratio = storagefs s / baseline s; target is the issue's (<= 0.1: 10x faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
