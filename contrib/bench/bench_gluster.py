#!/usr/bin/env python3
"""Benchmark a storagefs gluster pool against libvirt's gluster driver (issue 12,
"A benchmark"): ``ls -l volumes/`` of N files of one Gluster volume vs ``virsh vol-list
--details`` of the same volume through a private libvirtd, and refresh times.

Run as root from the repository root, with no other glusterd running (it allows one per
machine; this script refuses to start when one runs):

    .venv/bin/python contrib/bench/bench_gluster.py [--files 1000] [--no-virsh]

It starts a private glusterd (tests/server_gluster.py: working dir in a temp dir, bound
to 127.0.0.1), makes a one-brick volume on this host's name, writes N sparse 1 GiB raw
files into it through a GlusterFS client of its own, mounts storagefs with a gluster
pool of that volume, and starts a private libvirtd (contrib/bench/_libvirt.py) with a
gluster pool of the same volume (libvirt-daemon-driver-storage-gluster). Everything is
torn down at the end, also on failure or Ctrl-C. Ratio = storagefs / libvirt seconds.
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
from pathlib import Path

from _libvirt import (
    Libvirt,
    mount_storagefs,
    mounted_under,
    run,
    timed,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from server_gluster import GlusterdError, GlusterServer, start_glusterd  # noqa: E402

GIB = 1 << 30
POOL = "gbench"


def median_of(cmd: list[str], n: int = 3) -> float:
    return statistics.median(timed(cmd) for _ in range(n))


def wait_listed(volumes: Path, n: int, timeout: float = 600) -> float:
    """Seconds until ``ls volumes/`` shows n entries."""
    t0 = time.perf_counter()
    while len(os.listdir(volumes)) < n:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{volumes} lists {len(os.listdir(volumes))} of {n}")
        time.sleep(0.05)
    return time.perf_counter() - t0


def bench(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> list[list[str]]:
    proc = start_glusterd(work / "glusterd")
    server = GlusterServer(work / "glusterd", proc)
    stack.callback(server.close)
    vol = server.create_volume("sfbench")
    client = work / "client"
    stack.enter_context(server.mounted(vol, client))
    for i in range(args.files):
        with open(client / f"v{i:05d}.raw", "wb") as f:
            f.truncate(GIB)

    mnt, state = mount_storagefs(work, stack)
    pool = mnt / "pools" / POOL
    pool.mkdir()
    (pool / "config.xml").write_text(
        f"<pool type='gluster'><name>{POOL}</name><source><host name='{server.host}'/>"
        f"<dir path='/'/><name>{vol}</name></source></pool>\n")
    stack.callback(lambda: subprocess.run(["sh", "-c", f"echo stop > {pool}/control"]))
    t_start = timed(["sh", "-c", f"echo start > {pool}/control"])
    t_start += wait_listed(pool / "volumes", args.files)
    t_refresh = median_of(["sh", "-c", f"echo refresh > {pool}/control"])
    ls = ["ls", "-l", str(pool / "volumes")]
    ls_cold, ls_warm = timed(ls), median_of(ls)

    rows = [["start (mount + list)", "pool-start", f"{t_start:.3f}"],
            ["refresh", "pool-refresh", f"{t_refresh:.3f}"],
            ["ls -l volumes/ (first)", "vol-list --details (first)", f"{ls_cold:.3f}"],
            ["ls -l volumes/ (median of 3)", "vol-list --details (median of 3)",
             f"{ls_warm:.3f}"]]
    # a plain client's ls -l of the same files: what any network filesystem costs
    plain = median_of(["ls", "-l", str(client)])
    rows.append(["(ls -l on a GlusterFS client)", "", f"{plain:.3f}"])

    if args.no_virsh or not all(shutil.which(c) for c in ("virsh", "libvirtd", "nsenter")):
        print("note: skipping the libvirt baseline", file=sys.stderr)
        return [[*r, "-", "-"] for r in rows]
    lv = Libvirt(work / "libvirt")
    stack.callback(lv.stop)
    lv.start()
    run(lv.virsh("pool-define-as", POOL, "gluster", "--source-host", server.host,
                 "--source-name", vol, "--source-path", "/"))
    base = [timed(lv.virsh("pool-start", POOL)),
            median_of(lv.virsh("pool-refresh", POOL))]
    listing = lv.virsh("vol-list", "--details", POOL)
    base += [timed(listing), median_of(listing), 0.0]
    out = subprocess.run(listing, capture_output=True, text=True, check=True).stdout
    listed = sum(1 for line in out.splitlines() if line.strip())
    if listed != args.files:
        print(f"note: virsh vol-list shows {listed} volumes, not {args.files}", file=sys.stderr)
    with contextlib.suppress(subprocess.CalledProcessError):
        run(lv.virsh("pool-destroy", POOL))
    table = []
    for row, b in zip(rows, base, strict=True):
        sf = float(row[2])
        table.append([*row, f"{b:.3f}" if b else "-", f"{sf / b:.3f}" if b else "-"])
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--no-virsh", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (glusterd, FUSE mounts, libvirtd)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sf-gbench-", dir=args.workdir))
    try:
        with contextlib.ExitStack() as stack:
            table = bench(args, work, stack)
    except GlusterdError as exc:
        print(f"cannot start glusterd: {exc}", file=sys.stderr)
        return 1
    finally:
        left = mounted_under(work)
        if left:  # never delete through a mount that is still there
            print(f"note: still mounted, {work} left in place: {', '.join(left)}",
                  file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    head = ["storagefs", "libvirt", "storagefs s", "libvirt s", "ratio"]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    print(f"gluster pool of {args.files} sparse 1 GiB raw files, one-brick volume on "
          "127.0.0.1 (ratio = storagefs / libvirt)")
    for r in [head, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
