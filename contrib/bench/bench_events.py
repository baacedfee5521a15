#!/usr/bin/env python3
"""Benchmark issue 14's events and metrics against what virsh offers, in the same run.

Run as root from the repository root (libvirt is used when present):

    .venv/bin/python contrib/bench/bench_events.py [--volumes 200] [--rounds 20]
        [--readers 60] [--no-virsh] [--workdir /tmp]

Rows:
- pool start/stop -> event seen by a reader: storagefs (`cat MNT/events`, the command
  written to `control`) against libvirt (`virsh pool-event --loop`, `virsh
  pool-start/pool-destroy`), from the moment the command has returned to the moment
  the reader has the line (0 or below: the line was there when the command returned);
- volume create -> event: storagefs only (libvirt has no volume events);
- metrics of a pool of N volumes: `cat MNT/metrics.prom` against what a virsh-based
  exporter runs (`virsh pool-list --details` + `virsh vol-list --details`);
- a listing while R readers of events wait in read(): `ls MNT/pools` with and
  without them (the readers must hold up nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _libvirt import Libvirt, mounted_under, print_log, run, storagefs_cli, timed


class LineReader:
    """A reader process whose stdout lines are timestamped as they arrive."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.q.put((time.perf_counter(), line))

    def wait(self, *words: str, timeout: float = 30) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            t, line = self.q.get(timeout=max(0.01, deadline - time.perf_counter()))
            if all(w in line for w in words):
                return t

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def command(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text + "\n")


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.2f} ms"


def fill(target: Path, n: int) -> None:
    target.mkdir(parents=True)
    for i in range(n):
        with open(target / f"v{i:05}.raw", "wb") as f:
            f.truncate(1 << 20)


def bench(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    mnt, state = work / "mnt", work / "state"
    mnt.mkdir()
    state.mkdir()
    log = work / "storagefs.log"
    with open(log, "wb") as lf:
        sf = subprocess.Popen([*storagefs_cli(), "mount", str(mnt), "--state-dir", str(state),
                               "--foreground"], stdout=lf, stderr=lf)
    lv = None
    try:
        for _ in range(300):
            if (mnt / "README").exists():
                break
            time.sleep(0.05)
        fill(work / "sf-pool", args.volumes)
        pool = mnt / "pools" / "bp"
        pool.mkdir()
        (pool / "config.xml").write_text(
            f"<pool type='dir'><name>bp</name><target><path>{work}/sf-pool</path>"
            "</target></pool>\n")
        command(pool / "control", "start")

        reader = LineReader(["cat", str(mnt / "events")])
        reader.wait("storagefs events opened")
        sf_ev, sf_vol = [], []
        for _ in range(args.rounds):
            for cmd, ev in (("stop", "stopped"), ("start", "started")):
                command(pool / "control", cmd)
                t0 = time.perf_counter()
                sf_ev.append(reader.wait(" pool bp ", ev) - t0)
        for i in range(args.rounds):
            os.mkdir(pool / "volumes" / f"new{i}.raw")
            t0 = time.perf_counter()
            sf_vol.append(reader.wait(f" volume bp/new{i}.raw created") - t0)
        reader.close()

        sf_metrics = [timed(["cat", str(mnt / "metrics.prom")]) for _ in range(args.rounds)]

        def listing() -> list[float]:
            return [timed(["ls", str(mnt / "pools")]) for _ in range(args.rounds)]

        quiet = listing()
        waiting = [LineReader(["cat", str(mnt / "events")]) for _ in range(args.readers)]
        for r in waiting:
            r.wait("storagefs events opened")
        busy = listing()
        for r in waiting:
            r.close()

        lv_ev: list[float] = []
        lv_metrics: list[float] = []
        if args.virsh and shutil.which("libvirtd") and shutil.which("virsh"):
            lv = Libvirt(work / "libvirt")
            lv.start()
            fill(work / "lv-pool", args.volumes)
            run(lv.virsh("pool-define-as", "bp", "dir", "--target", str(work / "lv-pool")))
            run(lv.virsh("pool-start", "bp"))
            ev = LineReader(lv.virsh("pool-event", "--event", "lifecycle", "--loop"))
            time.sleep(1)  # virsh pool-event has no "listening" line
            for _ in range(args.rounds):
                for cmd, word in (("pool-destroy", "Stopped"), ("pool-start", "Started")):
                    run(lv.virsh(cmd, "bp"))
                    t0 = time.perf_counter()
                    lv_ev.append(ev.wait("storage pool bp:", word) - t0)
            ev.close()
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                run(lv.virsh("pool-list", "--details"))
                run(lv.virsh("vol-list", "bp", "--details"))
                lv_metrics.append(time.perf_counter() - t0)

        rows.append(("pool stop/start returned -> event line (median)", median_ms(sf_ev),
                     median_ms(lv_ev) if lv_ev else "-"))
        rows.append(("volume mkdir returned -> event line (median)", median_ms(sf_vol),
                     "no volume events"))
        rows.append((f"metrics of {args.volumes} volumes (median)", median_ms(sf_metrics),
                     median_ms(lv_metrics) if lv_metrics else "-"))
        rows.append(("ls pools, no reader waiting (median)", median_ms(quiet), ""))
        rows.append((f"ls pools, {args.readers} readers waiting (median / max)",
                     f"{median_ms(busy)} / {max(busy) * 1e3:.2f} ms", ""))
    finally:
        if lv is not None:
            lv.stop()
        subprocess.run([*storagefs_cli(), "unmount", str(mnt)], capture_output=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sf.wait(timeout=30)
        print_log(log)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--readers", type=int, default=60)
    ap.add_argument("--no-virsh", dest="virsh", action="store_false")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-events-", dir=args.workdir))
    try:
        rows = bench(args, work)
    finally:
        if not mounted_under(work):
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'storagefs':>22}  libvirt / virsh")
    for what, sf, lv in rows:
        print(f"{what:<{width}}  {sf:>22}  {lv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
