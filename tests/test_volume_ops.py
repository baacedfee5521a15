"""Volume control commands on a real mount: resize variants, clone, wipe, qcow2
snapshots (control and snapshots/), progress with poll()."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import threading

import pytest
from mount_helpers import (
    GiB,
    MiB,
    assert_one_error_line,
    command,
    qemu_info,
    read,
    run,
    sh,
    write_errno,
)


def qemu_io(path, cmd: str, fmt: str = "raw") -> str:
    return run(["qemu-io", "-f", fmt, "-c", cmd, path]).stdout


def test_resize_grow_delta_and_refused_shrink(mounted):
    v = mounted.vol("r.raw")
    os.mkdir(v)
    command(v / "control", "resize 2G")
    assert read(v / "capacity") == f"{2 * GiB}\n"
    command(v / "control", "resize --delta 512M")
    assert os.stat(v / "path").st_size == 2 * GiB + 512 * MiB
    code, call = write_errno(v / "control", "resize 1G\n")
    assert (code, call) == (errno.EINVAL, "write")
    assert "shrink" in assert_one_error_line(v)
    assert os.stat(v / "path").st_size == 2 * GiB + 512 * MiB
    command(v / "control", "resize --shrink 1G")
    assert os.stat(v / "path").st_size == GiB


def test_resize_of_a_format_qemu_img_cannot_resize_is_enotsup(mounted):
    v = mounted.vol("d.vmdk")
    os.mkdir(v)
    code, _ = write_errno(v / "control", "resize 2G\n")
    assert code == errno.ENOTSUP
    assert qemu_info(v / "path")["virtual-size"] == GiB


def test_clone_keeps_data_and_holes(mounted):
    src = mounted.vol("src.raw")
    os.mkdir(src)
    qemu_io(src / "path", "write -P 0x5a 100M 1M")
    command(src / "control", "clone copy.raw")
    dst = mounted.vol("copy.raw")
    assert "read 1048576/1048576" in qemu_io(dst / "path", "read -P 0x5a 100M 1M")
    st = os.stat(dst / "path")
    assert st.st_size == GiB and st.st_blocks * 512 <= 8 * MiB  # sparse, not 1 GiB
    assert read(dst / "format") == "raw\n"


def test_clone_with_format_converts(mounted):
    src = mounted.vol("src2.raw")
    os.mkdir(src)
    qemu_io(src / "path", "write -P 0x11 0 2M")
    command(src / "control", "clone conv.qcow2 --format qcow2")
    dst = mounted.vol("conv.qcow2")
    assert qemu_info(dst / "path")["format"] == "qcow2"
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src / "path", dst / "path"])


def test_clone_onto_taken_name_is_eexist_and_leaves_nothing(mounted):
    for name in ("a.raw", "b.raw"):
        os.mkdir(mounted.vol(name))
    before = sorted(os.listdir(mounted.images))
    code, _ = write_errno(mounted.vol("a.raw") / "control", "clone b.raw\n")
    assert code == errno.EEXIST
    assert sorted(os.listdir(mounted.images)) == before


def test_wipe_zero_and_bad_algorithm(mounted):
    v = mounted.vol("w.raw")
    os.mkdir(v)
    qemu_io(v / "path", "write -P 0x77 0 1M")
    command(v / "control", "wipe")
    assert "read 1048576/1048576" in qemu_io(v / "path", "read -P 0 0 1M")
    code, call = write_errno(v / "control", "wipe nosuch\n")
    assert (code, call) == (errno.EINVAL, "write")
    assert "nosuch" in assert_one_error_line(v)


def test_qcow2_snapshots_through_control_and_directory(mounted):
    v = mounted.vol("s.qcow2")
    os.mkdir(v)
    qemu_io(v / "path", "write -P 0x01 0 64k", "qcow2")
    command(v / "control", "snapshot before")
    qemu_io(v / "path", "write -P 0x02 0 64k", "qcow2")
    os.mkdir(v / "snapshots" / "after")
    assert sorted(os.listdir(v / "snapshots")) == ["after", "before"]
    assert sorted(os.listdir(v / "snapshots" / "before")) == [
        "date", "id", "vm-clock", "vm-state-size"]
    assert read(v / "snapshots" / "before" / "vm-state-size") == "0\n"
    names = [s["name"] for s in qemu_info(v / "path").get("snapshots", [])]
    assert names == ["before", "after"]
    command(v / "control", "revert before")
    assert "read 65536/65536" in qemu_io(v / "path", "read -P 0x01 0 64k", "qcow2")
    os.rmdir(v / "snapshots" / "after")
    command(v / "control", "delete-snapshot before")
    assert os.listdir(v / "snapshots") == []
    os.mkdir(v / "snapshots" / "x")
    with pytest.raises(FileExistsError):
        os.mkdir(v / "snapshots" / "x")


def test_snapshot_of_raw_is_enotsup_with_reason(mounted):
    v = mounted.vol("plain.raw")
    os.mkdir(v)
    code, _ = write_errno(v / "control", "snapshot s\n")
    assert code == errno.ENOTSUP
    assert "qcow2" in assert_one_error_line(v)
    with pytest.raises(OSError) as exc:
        os.mkdir(v / "snapshots" / "s")
    assert exc.value.errno == errno.ENOTSUP


def test_progress_is_shown_and_poll_wakes_during_a_clone(mounted):
    src = mounted.vol("big.raw")
    os.mkdir(src)
    sh(f"echo 'resize 2G' > {src}/control")
    qemu_io(src / "path", "write -P 0x42 0 1500M")
    fd = os.open(src / "progress", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        seen: list[str] = []
        listing_during: list[set[str]] = []
        worker = threading.Thread(target=lambda: subprocess.run(
            ["bash", "-c", f"echo 'clone big2.qcow2 --format qcow2' > {src}/control"]))
        worker.start()
        while True:
            if poller.poll(2000):
                text = os.pread(fd, 100, 0).decode()
                if text:
                    seen.append(text.strip())
                    listing_during.append(set(os.listdir(mounted.pool() / "volumes")))
            elif not worker.is_alive():
                break
        worker.join()
    finally:
        os.close(fd)
    assert seen and all(s.startswith("clone ") and s.endswith("%") for s in seen), seen
    assert len(seen) >= 3, seen
    # the new volume is listed only once it is complete
    assert all("big2.qcow2" not in names for names in listing_during)
    assert "big2.qcow2" in os.listdir(mounted.pool() / "volumes")
    assert read(src / "progress") == ""


def test_ctrl_c_on_the_writer_cancels_a_clone_and_leaves_nothing(mounted):
    src = mounted.vol("big.raw")
    os.mkdir(src)
    sh(f"echo 'resize 2G' > {src}/control")
    qemu_io(src / "path", "write -P 0x42 0 1800M")
    before = sorted(os.listdir(mounted.images))
    writer = subprocess.Popen(
        ["bash", "-c", f"echo 'clone half.qcow2 --format qcow2' > {src}/control"])
    deadline = 200
    while read(src / "progress") == "" and deadline and writer.poll() is None:
        deadline -= 1
        threading.Event().wait(0.02)
    assert writer.poll() is None, "the clone finished before it could be interrupted"
    writer.send_signal(2)  # what Ctrl-C sends
    assert writer.wait(timeout=30) != 0
    assert sorted(os.listdir(mounted.images)) == before  # no half-made file, no temp file
    assert "half.qcow2" not in os.listdir(mounted.pool() / "volumes")
    assert "interrupted" in assert_one_error_line(src)
    assert read(src / "progress") == ""
