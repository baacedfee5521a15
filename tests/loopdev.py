"""Loop devices for the block-pool tests (fs, disk, logical).

Each device is a sparse file under the test's tmp_path, attached with
``losetup -f --show`` WITHOUT ``-P`` (with -P, udev re-reading a table this
kernel cannot parse would wipe partition nodes). Cleanup only ever touches a
loop device whose backing file is one of ours: it unmounts what is mounted
from it (or from its partitions), removes LVM volume groups and PVs that live
only on our devices, drops partition nodes (``partx -d``) and detaches it.

Use::

    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")      # LoopDevice: .path (/dev/loopN), .name, .image
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1", LC_ALL="C")


def host(argv, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", LVM_ENV)
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                         timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}\nstdout: {res.stdout}\n"
                             f"stderr: {res.stderr}")
    return res


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def skip_reason(*tools: str) -> str | None:
    """Why loop-device tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root for loop devices"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control)"
    missing = missing_tools("losetup", "partx", "blkid", *tools)
    if missing:
        return f"missing host tools: {', '.join(missing)}"
    return None


class LoopDevice:
    def __init__(self, image: Path) -> None:
        self.image = image
        self.path = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def attach(self) -> str:
        res = host(["losetup", "-f", "--show", self.image])
        self.path = res.stdout.strip()
        assert self.path.startswith("/dev/loop"), res.stdout
        assert self.ours(), f"{self.path} is not backed by {self.image}"
        return self.path

    def backing_file(self) -> str | None:
        if not self.path:
            return None
        try:
            with open(f"/sys/block/{self.name}/loop/backing_file") as f:
                return f.read().strip()
        except OSError:
            return None

    def ours(self) -> bool:
        backing = self.backing_file()
        if backing is None:
            return False
        backing = backing.removesuffix(" (deleted)")
        return backing == str(self.image) or backing == os.path.realpath(self.image)

    def partitions(self) -> list[str]:
        """Nodes of the partitions the kernel knows on this device."""
        base = f"/sys/block/{self.name}"
        try:
            names = [n for n in os.listdir(base) if n.startswith(self.name)
                     and os.path.exists(f"{base}/{n}/partition")]
        except OSError:
            return []
        return [f"/dev/{n}" for n in sorted(names)]

    def part(self, number: int) -> str:
        return f"{self.path}p{number}"

    def detach(self) -> None:
        """partx -d and losetup -d, only while the device is still ours."""
        if not self.ours():
            return
        host(["partx", "-d", self.path], check=False)
        host(["losetup", "-d", self.path], check=False)

    def unmount_all(self) -> None:
        """Unmount every filesystem mounted from this device or its partitions."""
        if not self.ours():
            return
        devs = {self.path, *self.partitions()}
        rdevs = set()
        for d in devs:
            try:
                rdevs.add(os.stat(d).st_rdev)
            except OSError:
                pass
        targets = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-", 6)
                source = fields[sep + 2]
                try:
                    mine = source in devs or os.stat(source).st_rdev in rdevs
                except OSError:
                    mine = False
                if mine:
                    targets.append(fields[4].encode().decode("unicode_escape"))
        for target in reversed(targets):
            if host(["umount", target], check=False).returncode != 0:
                host(["umount", "-l", target], check=False)


def lvm_json(argv: list[str], kind: str) -> list[dict]:
    res = host([*argv, "--reportformat", "json"], check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return []
    rows = []
    for part in json.loads(res.stdout).get("report", []):
        rows.extend(part.get(kind, []))
    return rows


def remove_lvm(devices: list[LoopDevice]) -> None:
    """Remove VGs whose PVs are all ours, and the PV labels on our devices."""
    ours = {d.path for d in devices if d.ours()}
    if not ours or shutil.which("pvs") is None:
        return
    pvs = lvm_json(["pvs", "-o", "pv_name,vg_name"], "pv")
    by_vg: dict[str, set[str]] = {}
    for row in pvs:
        if row.get("vg_name"):
            by_vg.setdefault(row["vg_name"], set()).add(row.get("pv_name", ""))
    for vg, members in by_vg.items():
        if members and members <= ours:
            host(["vgremove", "-f", vg], check=False)
    for row in pvs:
        if row.get("pv_name") in ours:
            host(["pvremove", "-ff", "-y", row["pv_name"]], check=False)


class LoopSet:
    """Loop devices made for one test; all cleaned up on exit, whatever happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.devices: list[LoopDevice] = []

    def make(self, size: str = "64M", name: str | None = None) -> LoopDevice:
        image = self.base / (name or f"disk{len(self.devices)}.img")
        host(["truncate", "-s", size, image])
        dev = LoopDevice(image)
        self.devices.append(dev)
        dev.attach()
        return dev

    def cleanup(self) -> list[str]:
        problems = []
        for dev in reversed(self.devices):
            try:
                dev.unmount_all()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                problems.append(f"unmount {dev.path}: {exc!r}")
        try:
            remove_lvm(self.devices)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"lvm cleanup: {exc!r}")
        for dev in reversed(self.devices):
            try:
                dev.detach()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"detach {dev.path}: {exc!r}")
        return problems

    def __enter__(self) -> LoopSet:
        return self

    def __exit__(self, *exc) -> None:
        problems = self.cleanup()
        if problems:
            warnings.warn("loop device cleanup: " + "; ".join(problems), stacklevel=2)


def blkid(path: str) -> dict[str, str]:
    """``blkid -p -o export``: {} when nothing is found."""
    res = host(["blkid", "-p", "-o", "export", path], check=False)
    out = {}
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def parted_print(path: str) -> tuple[str, list[tuple[int, int, int]]]:
    """(label, [(number, start, size) ...]) from ``parted -m -s DEV unit B print``."""
    res = host(["parted", "-m", "-s", path, "unit", "B", "print"], check=False)
    label, parts = "", []
    for line in res.stdout.splitlines():
        fields = line.rstrip(";").split(":")
        if fields[0] == path and len(fields) > 5:
            label = fields[5]
        elif fields[0].isdigit() and len(fields) >= 4:
            parts.append((int(fields[0]), int(fields[1][:-1]), int(fields[3][:-1])))
    return label, parts


def findmnt(target: Path | str) -> dict[str, str] | None:
    """SOURCE and FSTYPE mounted on ``target`` (None when nothing is)."""
    res = host(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--mountpoint", str(target)],
               check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return None
    source, fstype = res.stdout.split()[:2]
    return {"SOURCE": source, "FSTYPE": fstype}
