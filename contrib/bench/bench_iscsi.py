#!/usr/bin/env python3
"""Benchmark iscsi-direct pools (issue 12): storagefs vs virsh on the same iSCSI target.

Run as root from the repository root (nothing is installed; needs tgt and libiscsi7, and
for the baseline libvirt with its iscsi-direct storage driver):

    .venv/bin/python contrib/bench/bench_iscsi.py [--luns 200] [--repeat 5] [--no-virsh]
        [--workdir /tmp]

One tgtd (its own portal on 127.0.0.1 and its own control port, LUNs backed by sparse
files in a temp dir, stopped by PID) serves one target with N LUNs. Side by side in one
run, on that target:
- storagefs: an iscsi-direct pool; `ls -l pools/P/volumes/` (cold: the first after the
  start; warm: median of R), `cat` of every volume's status.xml, `echo refresh >
  control`, `echo start > control`;
- virsh (a private libvirtd, see _libvirt.py) with libvirt's iscsi-direct pool:
  `virsh vol-list --details`, `virsh vol-dumpxml` of every LUN in one virsh,
  `virsh pool-refresh`, `virsh pool-start`.
Then: how long a LUN added on the target takes to show in `ls` (the poll interval is
2 s), and, with tgtd stopped (SIGSTOP), how long other pools take to answer.
Ratio = storagefs / baseline (below 1: storagefs is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _libvirt import (
    Libvirt,
    mount_storagefs,
    run,
    run_in,
    timed,
)

IQN = "iqn.2026-11.org.storagefs.bench:luns"
MIB = 1 << 20


class Table:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, what: str, base: str, n: int, sf: float, b: float | None,
            target: str = "") -> None:
        ratio = f"{sf / b:.2f}" if b else "-"
        met = ""
        if target and b:
            met = "yes" if sf / b <= float(target.split()[1]) else "NO"
        self.rows.append([what, base, str(n), f"{sf:.3f}", f"{b:.3f}" if b else "-", ratio,
                          target, met])
        print("  ".join(self.rows[-1]), file=sys.stderr, flush=True)

    def note(self, what: str, value: str, target: str = "", met: str = "") -> None:
        self.rows.append([what, "", "", value, "", "", target, met])
        print(f"  {what}: {value} {target} {met}", file=sys.stderr, flush=True)

    def print(self) -> None:
        head = ["measure", "baseline", "N", "storagefs s", "baseline s", "ratio", "target",
                "met"]
        table = [head, *self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for k, r in enumerate(table):
            print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
            if k == 0:
                print("  ".join("-" * w for w in widths))


class Tgtd:
    """tgtd on 127.0.0.1:PORT with management channel CONTROL (both free ones)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.control = next(n for n in range(23000 + os.getpid() % 5000, 32000)
                            if not Path(f"/var/run/tgtd/socket.{n}").exists())
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(300):
            if subprocess.run(self.adm("--mode", "sys", "--op", "show"),
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("tgtd did not answer")

    def adm(self, *args: str) -> list[str]:
        return ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]

    def lun(self, n: int, size: int) -> None:
        path = self.work / f"lun{n}.img"
        with open(path, "wb") as f:
            f.truncate(size)
        run(self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(n),
                     "--backing-store", str(path)))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        for suffix in ("", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/var/run/tgtd/socket.{self.control}{suffix}")


def pool_xml(name: str, port: int, initiator: str) -> str:
    return (f"<pool type='iscsi-direct'><name>{name}</name><source>"
            f"<host name='127.0.0.1' port='{port}'/><device path='{IQN}'/>"
            f"<initiator><iqn name='{initiator}'/></initiator></source></pool>\n")


def timed_write(path: Path, text: str) -> float:
    t0 = time.perf_counter()
    path.write_text(text)
    return time.perf_counter() - t0


def median_of(fn, repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def within(fn, limit: float) -> float:
    done = threading.Event()

    def work() -> None:
        with contextlib.suppress(OSError):
            fn()
        done.set()

    t0 = time.perf_counter()
    threading.Thread(target=work, daemon=True).start()
    done.wait(limit)
    return min(time.perf_counter() - t0, limit)


def bench(args, work: Path, stack: contextlib.ExitStack, t: Table) -> None:
    n, repeat = args.luns, args.repeat
    tgt = Tgtd(work)
    stack.callback(tgt.stop)
    run(tgt.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN))
    run(tgt.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address",
                "ALL"))
    for i in range(1, n + 1):
        tgt.lun(i, 64 * MIB + i * 4096)

    mnt, state = mount_storagefs(work, stack)
    pool = mnt / "pools" / "luns"
    pool.mkdir()
    (pool / "config.xml").write_text(pool_xml("luns", tgt.port, IQN + "-storagefs"))
    sf_start = timed_write(pool / "control", "start\n")
    vols = pool / "volumes"
    listing = ["ls", "-l", str(vols)]
    sf_cold = timed(listing)
    sf_warm = median_of(lambda: timed(listing), repeat)
    status = ["bash", "-c", f"cat {vols}/*/status.xml > /dev/null"]
    sf_cat = median_of(lambda: timed(status), repeat)
    sf_refresh = median_of(lambda: timed_write(pool / "control", "refresh\n"), repeat)
    listed = len(os.listdir(vols))
    t.note("LUNs listed by storagefs", f"{listed} of {n}")

    lv = None
    if not args.no_virsh and all(shutil.which(c) for c in ("virsh", "libvirtd", "nsenter")):
        lv = Libvirt(work / "libvirt")
        stack.callback(lv.stop)
        lv.start()
        xml = work / "lv-pool.xml"
        xml.write_text(pool_xml("luns", tgt.port, IQN + "-libvirt"))
        run(lv.virsh("pool-define", str(xml)))
        t0 = time.perf_counter()
        run(lv.virsh("pool-start", "luns"), timeout=900)
        lv_start = time.perf_counter() - t0
        vol_list = lv.virsh("vol-list", "luns", "--details")
        lv_cold = timed(vol_list)
        lv_warm = median_of(lambda: timed(vol_list), repeat)
        names = [line.split()[0] for line in run(lv.virsh("vol-list", "luns")).stdout
                 .splitlines() if line.strip()]
        script = "".join(f"vol-dumpxml --pool luns {v}\n" for v in names)
        lv_dump = median_of(lambda: timed(lv.virsh(), stdin=script), repeat)
        refresh = lv.virsh("pool-refresh", "luns")
        lv_refresh = median_of(lambda: timed(refresh), repeat)
        t.note("LUNs listed by libvirt", f"{len(names)} (LUN 0, the controller, too)")
        t.add("ls -l volumes/ (cold)", "virsh vol-list --details", n, sf_cold, lv_cold)
        t.add("ls -l volumes/ (warm)", "virsh vol-list --details", n, sf_warm, lv_warm,
              "<= 0.1")
        t.add("cat */status.xml", "one virsh: vol-dumpxml each", n, sf_cat, lv_dump)
        t.add("refresh", "virsh pool-refresh", n, sf_refresh, lv_refresh, "<= 1")
        t.add("start (login, list)", "virsh pool-start", n, sf_start, lv_start)
    else:
        t.add("ls -l volumes/ (cold)", "-", n, sf_cold, None)
        t.add("ls -l volumes/ (warm)", "-", n, sf_warm, None)
        t.add("cat */status.xml", "-", n, sf_cat, None)
        t.add("refresh", "-", n, sf_refresh, None)
        t.add("start (login, list)", "-", n, sf_start, None)

    # a LUN made on the target: seen at an ls within the poll interval
    tgt.lun(n + 1, 8 * MIB)
    t0 = time.perf_counter()
    name = f"unit:0:0:{n + 1}"
    while name not in os.listdir(vols) and time.perf_counter() - t0 < 10:
        time.sleep(0.05)
    seen = time.perf_counter() - t0
    t.note("LUN added on the target, until ls shows it", f"{seen:.2f} s", "<= 2 s",
           "yes" if seen <= 2 else "NO")

    # the target stops answering: other pools answer meanwhile
    os.kill(tgt.proc.pid, signal.SIGSTOP)
    try:
        worst = 0.0
        checks = {"ls pools/": lambda: os.listdir(mnt / "pools"),
                  "cat default/status.xml": lambda: (mnt / "pools/default/status.xml")
                  .read_bytes(),
                  "ls -l luns/volumes/": lambda: [os.lstat(p) for p in vols.iterdir()]}
        pending = threading.Thread(target=lambda: within(
            lambda: (pool / "control").write_text("refresh\n"), 60), daemon=True)
        pending.start()
        time.sleep(0.3)
        for what, fn in checks.items():
            took = within(fn, 5)
            worst = max(worst, took)
            t.note(f"target stopped, refresh pending: {what}", f"{took * 1e3:.1f} ms",
                   "<= 100 ms", "yes" if took <= 0.1 else "NO")
        pending.join(60)
        t.note("target stopped: the pool's state afterwards",
               (pool / "state").read_text().strip())
    finally:
        os.kill(tgt.proc.pid, signal.SIGCONT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--luns", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-virsh", action="store_true")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root (tgtd and FUSE)", file=sys.stderr)
        return 1
    for tool in ("tgtd", "tgtadm"):
        if not shutil.which(tool):
            print(f"{tool} missing: apt-get install tgt", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="sfiscsi-", dir=args.workdir or "/tmp")).resolve()
    t = Table()
    code = run_in(work, lambda stack: bench(args, work, stack, t), t.print)
    if code:
        return code
    print("ratio = storagefs / baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
