"""Issue 10, item 16: names that never change stay resolvable while others churn.

Volumes made and destroyed in one pool (and loop devices attached and detached)
must not make stable links fail: readlink of another pool's by-uuid link, of a
stable volume's by-path and by-key links, of a stable device's by-devnode link,
and reads of plain files, all from threads of their own while the churn runs.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from pathlib import Path

from mount_helpers import define_pool, escape_path, read, run, volume_defaults_el

CHURN = 200


def hammer(checks: dict, stop: threading.Event, failures: collections.Counter,
           counts: collections.Counter) -> None:
    """Run every check in turn until stop; count what failed, by check."""
    while not stop.is_set():
        for name, check in checks.items():
            try:
                check()
            except (OSError, AssertionError) as exc:
                failures[f"{name}: {type(exc).__name__} {exc}"] += 1
            counts[name] += 1


def run_with_readers(checks: dict, churn, threads: int = 3) -> tuple[dict, dict]:
    stop = threading.Event()
    failures: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    workers = [threading.Thread(target=hammer, args=(checks, stop, failures, counts),
                                daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        churn()
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=60)
    return dict(failures), dict(counts)


def expect_link(path: Path, target: str):
    def check() -> None:
        got = os.readlink(path)
        assert got == target, f"{path} -> {got}, not {target}"
    return check


def expect_content(path: Path, content: str):
    def check() -> None:
        got = read(path)
        assert got == content, f"{path}: {got!r}"
    return check


def test_stable_links_resolve_while_volumes_churn(mounted, tmp_path):
    m = mounted
    extra = volume_defaults_el("raw", "4M")
    churn = define_pool(m, "churn", tmp_path / "churn", extra=extra)
    other = define_pool(m, "other", tmp_path / "other", extra=extra)
    os.mkdir(churn / "volumes" / "keep")
    key = read(churn / "volumes" / "keep" / "key").strip()
    uuid = read(other / "uuid").strip()
    vol_target = "../../pools/churn/volumes/keep"
    checks = {
        "pools/by-uuid/<other pool>": expect_link(m.pools / "by-uuid" / uuid, "../other"),
        "pools/by-path/<other pool>": expect_link(
            m.pools / "by-path" / escape_path(tmp_path / "other"), "../other"),
        "volumes/by-path/<stable volume>": expect_link(
            m.mnt / "volumes" / "by-path" / escape_path(key), vol_target),
        "volumes/by-key/<stable volume>": expect_link(
            m.mnt / "volumes" / "by-key" / escape_path(key), vol_target),
        "keep/capacity through by-key": expect_content(
            m.mnt / "volumes" / "by-key" / escape_path(key) / "capacity", f"{4 << 20}\n"),
        "pools/other/state": expect_content(other / "state", "running\n"),
        "keep/capacity": expect_content(churn / "volumes" / "keep" / "capacity",
                                        f"{4 << 20}\n"),
    }
    for check in checks.values():
        check()

    def make_and_destroy() -> None:
        vols = churn / "volumes"
        for i in range(CHURN):
            os.mkdir(vols / f"c{i}")
            os.rmdir(vols / f"c{i}")

    failures, counts = run_with_readers(checks, make_and_destroy)
    print(f"\nCHURN {CHURN} volumes made and destroyed; checks run: {counts}")
    assert all(n > 0 for n in counts.values())
    assert not failures, f"stable names failed while others churned: {failures}"
    assert not [n for n in os.listdir(churn / "volumes") if n.startswith("c")]


def stable_block_device(m) -> tuple[str, str]:
    """A by-devnode name of a device that is not a loop device, and its link target."""
    byd = m.mnt / "devices" / "by-devnode"
    for node in sorted(os.listdir(byd)):
        if not node.startswith(("loop", "zram", "ram")):
            return node, os.readlink(byd / node)
    raise AssertionError(f"no device besides loop devices in {byd}: {os.listdir(byd)}")


def test_stable_device_links_resolve_while_loop_devices_come_and_go(mounted, tmp_path):
    m = mounted
    node, target = stable_block_device(m)
    byd = m.mnt / "devices" / "by-devnode"
    name = target.removeprefix("../")
    klass = read(m.mnt / "devices" / name / "subsystem").strip()
    checks = {
        f"by-devnode/{node}": expect_link(byd / node, target),
        f"by-devnode/{node}/subsystem": expect_content(byd / node / "subsystem", klass + "\n"),
        f"devices/{name}/subsystem": expect_content(m.mnt / "devices" / name / "subsystem",
                                                    klass + "\n"),
    }
    img = tmp_path / "disk.img"
    run(["truncate", "-s", "16M", img])

    def attach_detach() -> None:
        for _ in range(40):
            dev = run(["losetup", "-f", "--show", img]).stdout.strip()
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=True)

    failures, counts = run_with_readers(checks, attach_detach)
    print(f"\nCHURN loop devices attached and detached; checks run: {counts}")
    assert not failures, f"stable device names failed while others churned: {failures}"
