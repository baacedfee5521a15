"""Issue 10, item 7: a refused size change leaves the storage as it was.

The pool's target is a 64 MiB ext4 filesystem (a loop-mounted image under
tmp_path): a resize or a preallocation that does not fit is refused with
ENOSPC before anything changes, and one that runs out part-way (an ext4 without
extents, where glibc emulates fallocate block by block and indirect blocks take
more than statvfs says) gives back what it took and the size the file had.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from loopdev import skip_reason
from mount_helpers import (
    GiB,
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    read,
    run,
    volume_xml,
    write_errno,
)

#: the ext4 without extents: indirect blocks, no fallocate (glibc emulates it)
NO_EXTENTS = ("-O", "^64bit,^extent,^flex_bg")


@pytest.fixture
def small_fs(tmp_path, request):
    """A 64 MiB ext4 mounted on tmp_path/small (request it before mount_factory, so it
    is unmounted after storagefs stopped). ``request.param``: extra mkfs options."""
    reason = skip_reason("mkfs.ext4", "mount", "umount")
    if reason:
        pytest.skip(reason)
    image, target = tmp_path / "small.img", tmp_path / "small"
    target.mkdir()
    run(["truncate", "-s", "64M", image])
    run(["mkfs.ext4", "-q", "-F", "-m", "0", *getattr(request, "param", ()), image])
    run(["mount", "-o", "loop", image, target])
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def available(target) -> int:
    vfs = os.statvfs(target)
    return vfs.f_bavail * vfs.f_frsize


def figures(vol) -> tuple[str, str]:
    return read(vol / "capacity"), read(vol / "allocation")


def assert_refused_unchanged(vol, target, act, before_free: int) -> None:
    before = figures(vol)
    assert act() == (errno.ENOSPC, "write")
    assert_one_error_line(vol)
    assert figures(vol) == before
    # the space is there again (ext4 may keep a block or two of metadata)
    assert available(target) >= before_free - MiB, (available(target), before_free)


def test_resize_allocate_beyond_free_space_changes_nothing(small_fs, mount_factory):
    m = mount_factory()
    pool = define_pool(m, "small", small_fs)
    os.mkdir(m.vol("v1", "small"))
    os.mkdir(m.vol("q.qcow2", "small"))
    free = available(small_fs)
    assert read(pool / "available") == f"{free}\n"
    for name in ("v1", "q.qcow2"):
        vol = m.vol(name, "small")
        assert_refused_unchanged(vol, small_fs,
                                 lambda vol=vol: write_errno(vol / "control",
                                                             "resize --allocate 2G\n"), free)
        assert read(vol / "capacity") == f"{GiB}\n"
    assert read(pool / "available") == f"{available(small_fs)}\n"
    assert "No space left" in read(m.vol("v1", "small") / "error") or \
        "available" in read(m.vol("v1", "small") / "error")


def test_document_preallocation_beyond_free_space_changes_nothing(small_fs, mount_factory):
    m = mount_factory()
    define_pool(m, "small", small_fs)
    vol = m.vol("v2", "small")
    os.mkdir(vol)
    command(vol / "control", "resize --shrink 200M")
    free = available(small_fs)
    doc = vol / "config.xml"
    old_doc = read(doc)
    # a larger capacity, preallocated: neither the size nor the space change
    assert_refused_unchanged(vol, small_fs, lambda: write_errno(
        doc, volume_xml("v2", 2 * GiB, allocation=2 * GiB)), free)
    assert read(vol / "capacity") == f"{200 * MiB}\n"
    # the same capacity, preallocated
    assert_refused_unchanged(vol, small_fs, lambda: write_errno(
        doc, volume_xml("v2", 200 * MiB, allocation=200 * MiB)), free)
    assert read(vol / "allocation") == "0\n"
    assert read(doc) == old_doc
    assert os.stat(small_fs / "v2").st_size == 200 * MiB


@pytest.mark.parametrize("small_fs", [NO_EXTENTS], indirect=True, ids=["no-extents"])
def test_allocation_failing_part_way_gives_the_space_back(small_fs, mount_factory):
    """Enough free space by statvfs, yet the allocation runs out (indirect blocks): the
    blocks it took are given back and the size is what it was."""
    m = mount_factory()
    define_pool(m, "small", small_fs)
    vol = m.vol("v3", "small")
    os.mkdir(vol)
    command(vol / "control", "resize --shrink 1M")
    # 16 KiB less than is free: passes the check, but the indirect blocks do not fit
    free = available(small_fs)
    size = MiB + (free - 16 * 1024) // 4096 * 4096
    assert_refused_unchanged(vol, small_fs, lambda: write_errno(
        vol / "control", f"resize --allocate {size}\n"), free)
    assert os.stat(small_fs / "v3").st_size == MiB
    free = available(small_fs)
    size = (free - 16 * 1024) // 4096 * 4096
    command(vol / "control", f"resize {size}")
    assert_refused_unchanged(vol, small_fs, lambda: write_errno(
        vol / "config.xml", volume_xml("v3", size, allocation=size)), free)
    assert os.stat(small_fs / "v3").st_size == size
    assert int(read(vol / "allocation")) < MiB
