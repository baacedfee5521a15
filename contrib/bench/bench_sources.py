#!/usr/bin/env python3
"""Benchmark discovery (sources/) and migration (import-libvirt) against virsh on a private
libvirtd (_libvirt.py), side by side in the same run (issue 14 parts 3 and 4).

Run as root from the repository root (loop devices and an LVM volume group are made and
removed; libvirtd runs in its own mount namespace):

    .venv/bin/python contrib/bench/bench_sources.py [--pools 50] [--workdir /tmp]

Rows:
- finding a volume group: ``ls sources/logical`` + ``cat VG.xml`` (served from the cache)
  against ``virsh find-storage-pool-sources logical`` (runs vgs/pvs every time);
- how long after ``vgcreate`` the new VG shows in sources/logical (background refresh);
- importing N dir pools: ``storagefs import-libvirt`` against defining the same N
  documents with ``virsh pool-define`` one by one; and the second, no-op import.
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
import uuid
from pathlib import Path

from _libvirt import Libvirt, mounted_under, print_log, run, storagefs_cli, timed


def median_time(fn, n: int) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def row(what: str, n: int, sf: float, base: float | None, base_name: str) -> None:
    ratio = f"{sf / base:.3f}" if base else "-"
    b = f"{base * 1e3:9.2f} ms" if base else "-"
    print(f"{what:<48} N={n:<4} storagefs {sf * 1e3:9.2f} ms   {base_name} {b}   "
          f"ratio {ratio}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", type=int, default=50)
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop devices, LVM, FUSE)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sfbench-sources-", dir=args.workdir))
    cli = storagefs_cli()
    vg = f"sfbench_{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        lv = Libvirt(work / "libvirt")
        stack.callback(lv.stop)
        lv.start()
        mnt, state = work / "mnt", work / "state"
        mnt.mkdir()
        state.mkdir()
        run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=120)
        stack.callback(lambda: subprocess.run([*cli, "unmount", str(mnt)]))

        image = work / "pv.img"
        image.write_bytes(b"")
        os.truncate(image, 64 << 20)
        loop = run(["losetup", "-f", "--show", str(image)]).stdout.strip()
        stack.callback(lambda: subprocess.run(["losetup", "-d", loop]))
        run(["pvcreate", "-q", loop])
        stack.callback(lambda: subprocess.run(["pvremove", "-q", "-ff", "-y", loop]))
        run(["vgcreate", "-q", vg, loop])
        t_made = time.perf_counter()
        stack.callback(lambda: subprocess.run(["vgremove", "-q", "-f", vg]))
        logical = mnt / "sources" / "logical"
        while f"{vg}.xml" not in os.listdir(logical):
            if time.perf_counter() - t_made > 30:
                raise RuntimeError("the VG never showed in sources/logical")
            time.sleep(0.02)
        shown_after = time.perf_counter() - t_made

        def ours() -> None:
            assert f"{vg}.xml" in os.listdir(logical)
            (logical / f"{vg}.xml").read_bytes()

        ours()
        sf = median_time(ours, 50)
        virsh = lv.virsh("find-storage-pool-sources", "logical")
        assert vg in run(virsh).stdout
        base = median_time(lambda: run(virsh), 5)
        row("find a volume group (ls + cat, in this process)", 1, sf, base,
            "virsh find-storage-pool-sources")
        sf_ls = median_time(lambda: timed(["ls", str(logical)]), 5)
        row("find a volume group (ls, a process)", 1, sf_ls, base,
            "virsh find-storage-pool-sources")
        print(f"{'a new VG shows in sources/logical after':<48} {shown_after * 1e3:.0f} ms "
              "(background refresh; listing wakes it when stale)", flush=True)

        docs = work / "docs"
        docs.mkdir()
        for i in range(args.pools):
            target = work / "targets" / f"p{i:03d}"
            target.mkdir(parents=True)
            (docs / f"p{i:03d}.xml").write_text(
                f"<pool type='dir'><name>p{i:03d}</name><uuid>{uuid.uuid4()}</uuid>"
                f"<target><path>{target}</path></target></pool>\n")
        t0 = time.perf_counter()
        for i in range(args.pools):
            run(lv.virsh("pool-define", str(docs / f"p{i:03d}.xml")))
        base = time.perf_counter() - t0
        imp = [*cli, "import-libvirt", "--mount", str(mnt),
               "--run-dir", f"/proc/{lv.pid}/root/run/libvirt/storage",
               str(work / "libvirt" / "etc" / "storage")]
        t0 = time.perf_counter()
        res = subprocess.run(imp, capture_output=True, text=True)
        sf = time.perf_counter() - t0
        imported = sum(1 for ln in res.stdout.splitlines() if ln.startswith("imported"))
        assert imported == args.pools, res.stdout + res.stderr
        row("import N dir pools (one command)", args.pools, sf, base, "virsh pool-define xN")
        t0 = time.perf_counter()
        res = subprocess.run(imp, capture_output=True, text=True)
        sf = time.perf_counter() - t0
        assert res.returncode == 0 and not [ln for ln in res.stdout.splitlines()
                                            if ln.startswith("imported")], res.stdout
        row("import again (changes nothing)", args.pools, sf, base, "virsh pool-define xN")
        for i in range(args.pools):
            os.rmdir(mnt / "pools" / f"p{i:03d}")
        print_log(state / "storagefs.log")
    left = mounted_under(work)
    if left:
        print(f"NOT removing {work}: still mounted: {left}", file=sys.stderr)
        return 1
    run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
