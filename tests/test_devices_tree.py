"""devices/ on a real mount: the tree, its XML, and hotplug seen by the next ls (issue 5)."""

from __future__ import annotations

import os
import subprocess
import time

from lxml import etree
from mount_helpers import conformance, read, run


def nodedev_schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(conformance("libvirt", "src", "conf", "schemas",
                                                     "nodedev.rng"))))


def drop_partitions(dev: str) -> None:
    """partx -d, retried while udev's own probe of the new partition holds it open."""
    deadline = time.monotonic() + 5
    while True:
        res = subprocess.run(["partx", "-d", dev], capture_output=True, text=True)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert res.returncode == 0, res.stderr


def test_devices_tree_lists_every_device_with_valid_xml(mounted):
    d = mounted.mnt / "devices"
    names = set(os.listdir(d))
    assert {"computer", "by-class", "by-devnode"} <= names
    schema = nodedev_schema()
    devices = sorted(names - {"by-class", "by-devnode"})
    assert any(n.startswith("pci_") for n in devices)
    for name in devices:
        xml = (d / name / "device.xml").read_bytes()
        doc = etree.fromstring(xml)
        assert schema.validate(doc), (name, schema.error_log)
        assert doc.findtext("name") == name
        if (d / name / "parent").is_symlink():
            parent = os.readlink(d / name / "parent")
            assert parent == f"../{doc.findtext('parent')}"
            assert (d / name / "parent" / "device.xml").exists()
        # ls -l sizes agree with what cat reads
        for f in os.listdir(d / name):
            p = d / name / f
            if not p.is_symlink():
                assert os.stat(p).st_size == len(p.read_bytes()), p


def test_by_class_and_by_devnode_links_resolve(mounted):
    d = mounted.mnt / "devices"
    classes = os.listdir(d / "by-class")
    assert {"system", "pci", "storage"} <= set(classes)
    for cls in classes:
        for name in os.listdir(d / "by-class" / cls):
            link = d / "by-class" / cls / name
            assert os.readlink(link) == f"../../{name}"
            xml = read(link / "device.xml")
            assert "<name>" in xml
    for node in os.listdir(d / "by-devnode"):
        target = d / "by-devnode" / node
        assert read(target / "devnode").strip() == "/dev/" + node.replace("!", "/")


def wait_listed(path, name: str, present: bool, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while (name in os.listdir(path)) != present:
        assert time.monotonic() - start < timeout, f"{name} present={present} not seen"
        time.sleep(0.005)
    return time.monotonic() - start


def test_loop_device_and_partition_appear_and_vanish_live(mounted, tmp_path):
    img = tmp_path / "disk.img"
    run(["truncate", "-s", "64M", img])
    byd = mounted.mnt / "devices" / "by-devnode"
    dev = run(["losetup", "-f", "--show", img]).stdout.strip()
    node = os.path.basename(dev)
    try:
        t_attach = wait_listed(byd, node, True)  # loop0-7 exist from boot: a 'change'
        deadline = time.monotonic() + 5
        while read(byd / node / "size").strip() != str(64 * 1024 * 1024):
            assert time.monotonic() < deadline, "attached loop device's size not seen"
            time.sleep(0.005)
        t_attach = time.monotonic() - deadline + 5
        run(["parted", "-s", dev, "mklabel", "gpt", "mkpart", "p1", "1MiB", "30MiB"])
        t_part = wait_listed(byd, node + "p1", True)
        part = byd / (node + "p1")
        assert read(part / "device.xml").count("<device>") == 1
        assert os.readlink(part / "parent") == f"../block_{node}"
        assert f"block_{node}p1" in os.listdir(mounted.mnt / "devices" / "by-class" / "storage")
        drop_partitions(dev)
        t_gone = wait_listed(byd, node + "p1", False)
        print(f"seen by ls after: attach {t_attach * 1000:.0f} ms, partition "
              f"{t_part * 1000:.0f} ms, partition removal {t_gone * 1000:.0f} ms")
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    # detached: the loop device is back to size 0
    deadline = time.monotonic() + 5
    while read(byd / node / "size").strip() != "0":
        assert time.monotonic() < deadline
        time.sleep(0.01)
