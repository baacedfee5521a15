#!/usr/bin/env python3
"""Benchmark an rbd pool of N images (issue 13): storagefs's refresh against
``virsh pool-refresh`` of the same Ceph pool through a private libvirtd, and
``ls -l volumes/`` after it against a dir pool of N volumes, side by side.

Run as root from the repository root:

    .venv/bin/python contrib/bench/bench_rbd.py [--images 1000] [--no-virsh]

It starts its own single-node Ceph cluster (tests/server_ceph.py: mon ports 13304/16793,
state in a temp dir), makes the images with one ``rbd`` process per 50 names in
parallel, mounts storagefs, and tears everything down (by PID), also on Ctrl-C.
Targets: refresh <= 1.5 s and >= 5x faster than virsh; ls -l within 3x of the dir pool.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _libvirt import Libvirt, mounted_under, print_log, run, storagefs_cli, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from server_ceph import CephCluster  # noqa: E402

POOL = "bench"


def make_images(cluster: CephCluster, n: int) -> None:
    """N images of 1 GiB; /usr/bin/python3's bindings when present (seconds), else
    rbd processes in parallel."""
    script = ("import rados, rbd, sys\nc = rados.Rados(conffile=sys.argv[1]); c.connect()\n"
              "io = c.open_ioctx(sys.argv[2])\nfor i in range(int(sys.argv[3])):\n"
              "    rbd.RBD().create(io, 'img%05d' % i, 1 << 30)\n")
    res = subprocess.run(["/usr/bin/python3", "-c", script, str(cluster.conf), POOL, str(n)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode == 0:
        return
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: cluster.rbd("create", f"{POOL}/img{i:05d}", "--size", "1G"),
                    range(n)))


def median(fn, k: int) -> float:
    return statistics.median(fn() for _ in range(k))


def ls_l(path: Path) -> float:
    return timed(["ls", "-l", str(path)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--no-virsh", action="store_true")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    n = args.images
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="bench-rbd-", dir=args.workdir))
        cluster = CephCluster(work / "ceph", ports=(13304, 16793), pool=POOL)
        t0 = time.perf_counter()
        cluster.start()
        stack.callback(cluster.stop)
        print(f"ceph cluster up in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        make_images(cluster, n)
        print(f"{n} images made in {time.perf_counter() - t0:.1f} s", flush=True)

        mnt, state, log = work / "mnt", work / "state", work / "storagefs.log"
        mnt.mkdir()
        state.mkdir()
        logf = stack.enter_context(open(log, "wb"))
        proc = subprocess.Popen([*storagefs_cli(), "mount", str(mnt), "--state-dir", str(state),
                                 "--foreground"], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf)

        def unmount() -> None:
            subprocess.run([*storagefs_cli(), "unmount", str(mnt)], capture_output=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()

        stack.callback(unmount)
        for _ in range(100):
            if mounted_under(mnt) and (mnt / "README").exists():
                break
            time.sleep(0.1)
        xml = (f"<pool type='rbd'><name>r</name><source><name>{POOL}</name>"
               f"<host name='127.0.0.1' port='{cluster.v1}'/></source></pool>")
        pdir = mnt / "pools" / "r"
        os.mkdir(pdir)
        (pdir / "config.xml").write_text(xml)
        (pdir / "control").write_text("start\n")
        assert len(os.listdir(pdir / "volumes")) == n, "not every image is listed"

        def refresh() -> float:
            t = time.perf_counter()
            (pdir / "control").write_text("refresh\n")
            return time.perf_counter() - t

        sfs_refresh = median(refresh, 3)
        sfs_ls = median(lambda: ls_l(pdir / "volumes"), 3)
        # the background cost of allocation figures: one rbd du of the pool (fast-diff)
        du = median(lambda: timed(["rbd", "--conf", str(cluster.conf), "du", "-p", POOL,
                                   "--format", "json"]), 3)

        files = work / "files"
        files.mkdir()
        for i in range(n):
            with open(files / f"img{i:05d}", "wb") as f:
                f.truncate(1 << 30)
        ddir = mnt / "pools" / "d"
        os.mkdir(ddir)
        (ddir / "config.xml").write_text(f"<pool type='dir'><name>d</name><target><path>"
                                         f"{files}</path></target></pool>")
        (ddir / "control").write_text("start\n")
        assert len(os.listdir(ddir / "volumes")) == n
        dir_ls = median(lambda: ls_l(ddir / "volumes"), 3)

        (pdir / "control").write_text("stop\n")  # no polling while virsh is measured
        virsh_refresh = None
        if not args.no_virsh:
            lv = Libvirt(work / "libvirt")
            lv.start()
            stack.callback(lv.stop)
            pxml = work / "pool.xml"
            pxml.write_text(xml.replace("<name>r</name>", "<name>vr</name>"))
            run(lv.virsh("pool-define", str(pxml)))
            run(lv.virsh("pool-start", "vr"), timeout=900)
            count = len(run(lv.virsh("vol-list", "vr")).stdout.strip().splitlines())
            assert count == n, f"virsh lists {count} volumes"
            virsh_refresh = median(lambda: timed(lv.virsh("pool-refresh", "vr")), 2)

        print()
        print(f"{'what (' + str(n) + ' images)':<34}{'storagefs':>11}{'baseline':>11}"
              f"{'ratio':>8}  target")
        if virsh_refresh is not None:
            print(f"{'refresh vs virsh pool-refresh':<34}{sfs_refresh:>10.3f}s"
                  f"{virsh_refresh:>10.3f}s{virsh_refresh / sfs_refresh:>7.1f}x  "
                  f"<= 1.5 s, >= 5x faster")
        else:
            print(f"{'refresh':<34}{sfs_refresh:>10.3f}s{'-':>11}{'-':>8}  <= 1.5 s")
        print(f"{'rbd du -p (background, fast-diff)':<34}{du:>10.3f}s{'-':>11}{'-':>8}"
              f"  at most 1/10 of the time")
        print(f"{'ls -l volumes/ vs dir pool':<34}{sfs_ls:>10.3f}s{dir_ls:>10.3f}s"
              f"{sfs_ls / dir_ls:>7.2f}x  within 3x")
        print_log(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
