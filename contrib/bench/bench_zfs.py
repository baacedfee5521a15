#!/usr/bin/env python3
"""Benchmark a storagefs ``zfs`` pool (issue 12): refresh and ``ls -l volumes/`` of N
datasets, side by side in one run with ``zfs get`` itself and with virsh on the same
zpool through a private libvirtd (libvirt-daemon-driver-storage-zfs).

Run as root from the repository root (zfs-fuse must be installed and not running: the
script starts it, one daemon per machine, and stops it by pid at the end):

    .venv/bin/python contrib/bench/bench_zfs.py [--datasets 200] [--no-virsh]
        [--workdir /tmp]

The zpool lives on a sparse file vdev in the workdir; its datasets have mountpoint=none
(no FUSE mount of zfs-fuse per dataset). What libvirt's driver lists is zvols only
(`zfs list -t volume`), and zfs-fuse has none: virsh lists 0 volumes of the same
zpool, so its rows time what libvirt does for that zpool, not a listing of N volumes
(the table says how many each side listed).
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
import time
import uuid
from pathlib import Path

from _libvirt import Libvirt, mount_storagefs, run, timed


def zfs_fuse_running() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "zfs-fuse":
                    pids.append(int(entry))
    return pids


def start_zfs_fuse(work: Path, stack: contextlib.ExitStack) -> None:
    log = open(work / "zfs-fuse.log", "wb")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    proc = subprocess.Popen(["zfs-fuse", "-n", "--no-kstat-mount", "-p",
                             str(work / "zfs-fuse.pid")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    stack.callback(stop)
    for _ in range(300):
        if subprocess.run(["zpool", "list"], capture_output=True).returncode == 0:
            return
        if proc.poll() is not None:
            sys.exit(f"zfs-fuse exited with {proc.returncode}")
        time.sleep(0.05)
    sys.exit("zfs-fuse did not answer within 15 s")


def median(cmd: list[str], n: int = 3) -> float:
    return statistics.median(timed(cmd) for _ in range(n))


def ls_l(path: Path) -> float:
    return timed(["ls", "-l", str(path)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=200)
    ap.add_argument("--no-virsh", action="store_true")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if shutil.which("zfs-fuse") is None:
        sys.exit("zfs-fuse not installed (apt-get install zfs-fuse)")
    if zfs_fuse_running():
        sys.exit(f"zfs-fuse already runs (pid {zfs_fuse_running()}): one per machine")
    n = args.datasets
    rows: list[tuple[str, str, float, str]] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="sfbench-zfs-", dir=args.workdir))
        stack.callback(lambda: shutil.rmtree(work, ignore_errors=True))
        start_zfs_fuse(work, stack)
        zp = f"sfbench{uuid.uuid4().hex[:6]}"
        vdev = work / "vdev"
        run(["truncate", "-s", "1G", str(vdev)])
        run(["zpool", "create", "-m", "none", zp, str(vdev)])
        stack.callback(lambda: subprocess.run(["zpool", "destroy", "-f", zp],
                                              capture_output=True))
        t0 = time.perf_counter()
        script = "".join(f"zfs create -o refquota={(i + 1) << 20} {zp}/ds{i:04d}\n"
                         for i in range(n))
        subprocess.run(["bash", "-e"], input=script, text=True, check=True)
        made = time.perf_counter() - t0
        get = ["zfs", "get", "-Hp", "-r", "-o", "name,property,value",
               "type,used,available,referenced,volsize,refquota", zp]
        rows.append((f"zfs create x{n} (setup)", "-", made, ""))
        rows.append(("zfs get -Hp -r (the listing a refresh runs)", "-", median(get), ""))

        mnt, state = mount_storagefs(work, stack)
        pool = mnt / "pools" / "bz"
        pool.mkdir()
        (pool / "config.xml").write_text(
            f"<pool type='zfs'><name>bz</name><source><name>{zp}</name>"
            f"<device path='{vdev}'/></source></pool>\n")
        t0 = time.perf_counter()
        (pool / "control").write_text("start\n")
        rows.append(("storagefs start (lists all)", f"{len(os.listdir(pool / 'volumes'))}",
                     time.perf_counter() - t0, ""))
        refresh = ["bash", "-c", f"echo refresh > {pool}/control"]
        rows.append(("storagefs refresh", str(n), median(refresh), ""))
        vols = pool / "volumes"
        rows.append(("storagefs ls -l volumes/ (cold)", str(len(os.listdir(vols))), ls_l(vols),
                     ""))
        rows.append(("storagefs ls -l volumes/ (warm)", str(n),
                     statistics.median(ls_l(vols) for _ in range(3)), ""))
        cat = ["bash", "-c", f"cat {vols}/*/capacity > /dev/null"]
        rows.append(("storagefs cat */capacity", str(n), median(cat), ""))

        if not args.no_virsh and all(shutil.which(c) for c in ("virsh", "libvirtd",
                                                               "nsenter")):
            lv = Libvirt(work / "libvirt")
            stack.callback(lv.stop)
            lv.start()
            defined = subprocess.run(lv.virsh("pool-define-as", "bz", "zfs", "--source-name",
                                              zp), capture_output=True, text=True)
            started = subprocess.run(lv.virsh("pool-start", "bz"), capture_output=True,
                                     text=True)
            note = (started.stderr or defined.stderr).strip().splitlines()
            if started.returncode == 0:
                listing = lv.virsh("vol-list", "bz", "--details")
                listed = subprocess.run(listing, capture_output=True, text=True)
                count = len([ln for ln in listed.stdout.splitlines() if ln.strip()])
                rows.append(("virsh pool-refresh", str(count),
                             median(lv.virsh("pool-refresh", "bz")), ""))
                timed(listing)
                rows.append(("virsh vol-list --details (warm)", str(count), median(listing),
                             "zvols only: datasets are not listed"))
                info = subprocess.run(lv.virsh("pool-info", "bz", "--bytes"),
                                      capture_output=True, text=True)
                cap = [ln for ln in info.stdout.splitlines() if ln.startswith("Capacity")]
                rows.append(("virsh pool-info", "-", median(lv.virsh("pool-info", "bz")),
                             (cap[0] if cap else "no capacity") +
                             f" vs storagefs {(pool / 'capacity').read_text().strip()}"))
            else:
                rows.append(("virsh pool-start", "-", 0.0,
                             f"failed: {note[0] if note else started.returncode}"))
        else:
            rows.append(("virsh", "-", 0.0, "skipped"))

    print(f"\nzfs pool benchmark, {n} datasets (zfs-fuse, file vdev)")
    print(f"{'what':48} {'listed':>7} {'seconds':>9}  note")
    for what, listed, secs, note in rows:
        print(f"{what:48} {listed:>7} {secs:9.3f}  {note}")


if __name__ == "__main__":
    main()
