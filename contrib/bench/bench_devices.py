#!/usr/bin/env python3
"""Benchmark storagefs devices/ against virsh nodedev-list / nodedev-dumpxml (issue 5, "Fast").

Run as root from the repository root (nothing is installed; libvirt is used when present):

    /work/main/.venv/bin/python contrib/bench/bench_devices.py [--repeat 5] [--no-virsh] \\
        [--workdir /tmp]

It mounts storagefs in a temp dir, starts a private libvirtd (see _libvirt.py) when `virsh`
and `libvirtd` exist, prints one table and the device counts of both sides, and tears
everything down, also on Ctrl-C. Every figure is wall time of whole processes: the median
of --repeat runs; storagefs's "cold" rows are the first run after the mount. Ratio =
storagefs s / virsh s; the issue's target is a listing at least 10x faster (ratio <= 0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shlex
import shutil
import statistics
import sys
import tempfile
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

LIST_TARGET = 0.1  # the issue: listing at least 10x faster than virsh


@dataclass
class Row:
    op: str
    base_op: str
    sf: float
    base: float | None = None
    target: float | None = None  # maximum allowed ratio

    def cells(self) -> list[str]:
        if self.base is None:
            return [self.op, self.base_op, f"{self.sf:.4f}", "-", "-", "", ""]
        ratio = self.sf / self.base
        met = "" if self.target is None else ("yes" if ratio <= self.target else "NO")
        tgt = "" if self.target is None else f"<= {self.target:g}"
        return [self.op, self.base_op, f"{self.sf:.4f}", f"{self.base:.4f}", f"{ratio:.3f}",
                tgt, met]


def median(cmd: list[str], n: int, stdin: str | None = None) -> float:
    return statistics.median(timed(cmd, stdin) for _ in range(n))


def bench(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack,
          rows: list[Row], notes: list[str]) -> None:
    """Fill rows and notes as results come in (a failure still shows what was measured)."""
    mnt, state = work / "mnt", work / "state"
    mnt.mkdir()
    state.mkdir()
    cli = storagefs_cli()
    run([*cli, "mount", str(mnt), "--state-dir", str(state)], timeout=120)
    stack.callback(lambda: print_log(state / "storagefs.log"))
    stack.callback(lambda: run([*cli, "unmount", str(mnt)], timeout=60))
    lv: Libvirt | None = None
    if not args.no_virsh and all(shutil.which(c) for c in ("virsh", "libvirtd", "nsenter")):
        lv = Libvirt(work / "libvirt")
        stack.callback(lv.stop)
        lv.start()
    elif not args.no_virsh:
        notes.append("virsh/libvirtd/nsenter not found: storagefs figures only")
    else:
        notes.append("--no-virsh: storagefs figures only")

    devs = mnt / "devices"
    ls = ["ls", "-l", str(devs)]
    cat = ["bash", "-ec", f"cat {shlex.quote(str(devs))}/*/device.xml"]
    n = args.repeat
    # cold: the first requests after the mount (kernel caches empty)
    ls_cold = timed(ls)
    cat_cold = timed(cat)
    ls_warm, cat_warm = median(ls, n), median(cat, n)
    xmls = glob.glob(f"{glob.escape(str(devs))}/*/device.xml")
    sf_names = sorted(Path(x).parent.name for x in xmls)
    xml_bytes = len(run(cat).stdout)
    (work / "empty").mkdir()
    floor = median(["ls", "-l", str(work / "empty")], n)
    notes.append(f"process floor: ls -l of an empty local dir takes {floor:.4f} s")
    if not lv:
        rows += [Row("ls -l devices/ cold", "", ls_cold), Row("ls -l devices/ warm", "", ls_warm),
                 Row("cat devices/*/device.xml cold", "", cat_cold),
                 Row("cat devices/*/device.xml warm", "", cat_warm)]
        notes.append(f"storagefs lists {len(sf_names)} devices ({xml_bytes} bytes of XML)")
        return

    nodedev_list = lv.virsh("nodedev-list")
    v_names = sorted(run(nodedev_list, timeout=60).stdout.split())  # also waits for enumeration
    v_list = median(nodedev_list, n)
    rows += [Row("ls -l devices/ cold", "virsh nodedev-list", ls_cold, v_list, LIST_TARGET),
             Row("ls -l devices/ warm", "virsh nodedev-list", ls_warm, v_list, LIST_TARGET)]
    each = "".join(f"{shlex.join(lv.virsh('nodedev-dumpxml', d))} >/dev/null\n" for d in v_names)
    v_each = median(["bash", "-ec", each], n)
    stdin = "".join(f"nodedev-dumpxml {d}\n" for d in v_names)
    v_stdin = median(lv.virsh(), n, stdin)
    v_bytes = len(run(lv.virsh(), input=stdin).stdout)
    for label, sf in (("cold", cat_cold), ("warm", cat_warm)):
        rows += [Row(f"cat devices/*/device.xml {label}", "nodedev-dumpxml, 1 virsh each",
                     sf, v_each),
                 Row(f"cat devices/*/device.xml {label}", "nodedev-dumpxml, 1 virsh stdin",
                     sf, v_stdin)]
    notes.append(f"devices: storagefs {len(sf_names)} ({xml_bytes} bytes of XML), "
                 f"virsh {len(v_names)} ({v_bytes} bytes)")
    only_sf, only_v = sorted(set(sf_names) - set(v_names)), sorted(set(v_names) - set(sf_names))
    notes.append(f"only in storagefs ({len(only_sf)}): {' '.join(only_sf) or '-'}")
    notes.append(f"only in virsh ({len(only_v)}): {' '.join(only_v) or '-'}")


def print_table(rows: list[Row]) -> None:
    head = ["storagefs operation", "virsh baseline", "storagefs s", "virsh s", "ratio",
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
    p.add_argument("--repeat", type=int, default=5, help="runs per median (default 5)")
    p.add_argument("--no-virsh", action="store_true", help="skip the libvirt baseline")
    p.add_argument("--workdir", default=None, help="parent of the temp dir (default /tmp)")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("run as root (mounts FUSE, starts libvirtd)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sfbench-dev-", dir=args.workdir or "/tmp")).resolve()
    rows: list[Row] = []
    notes: list[str] = []

    def show() -> None:
        print_table(rows)
        for note in notes:
            print(note)

    code = run_in(work, lambda stack: bench(args, work, stack, rows, notes), show)
    print(f"ratio = storagefs s / virsh s; target: listing >= 10x faster (<= {LIST_TARGET:g}); "
          f"medians of {args.repeat} runs, one process per command (virsh via nsenter).")
    return code


if __name__ == "__main__":
    sys.exit(main())
