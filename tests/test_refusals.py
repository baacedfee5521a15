"""Issue 10, items 17 and 18, on a real mount: raw clones cross filesystems; every
refusal leaves its line in `error` and the log; error texts say what happened;
a SIGKILLed storagefs leaves no tool process writing on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mount_helpers import (
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    qemu_info,
    read,
    run,
    write_errno,
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256M"):
    """A tmpfs of our own at path (another filesystem than tmp_path's)."""
    path.mkdir()
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_pattern(path: Path, offsets: list[int], size: int = MiB) -> None:
    """Data at the given offsets of a sparse file; the rest stays a hole."""
    with open(path, "r+b") as f:
        for i, off in enumerate(offsets):
            f.seek(off)
            f.write(bytes([i + 1]) * size)


# ------------------------------------------------------------------ item 17


def test_raw_clone_to_a_pool_on_another_filesystem_is_a_sparse_copy(mounted, tmp_path):
    m = mounted
    os.mkdir(m.vol("src.raw"))  # 1 GiB sparse raw in the default pool (tmp_path's fs)
    offsets = [0, 300 * MiB, 1023 * MiB]
    fill_pattern(m.images / "src.raw", offsets)
    with tmpfs(tmp_path / "other") as other:
        assert os.stat(other).st_dev != os.stat(m.images).st_dev
        p2 = define_pool(m, "p2", other / "pool")
        res = write_errno(m.vol("src.raw") / "control", "clone copy.raw --pool p2\n")
        assert res == (None, None), f"clone across filesystems failed: {res}, " \
            f"error: {read(m.vol('src.raw') / 'error')!r}"
        assert "copy.raw" in ls_names(p2 / "volumes")
        copy = other / "pool" / "copy.raw"
        st = os.stat(copy)
        assert st.st_size == os.stat(m.images / "src.raw").st_size
        assert st.st_blocks * 512 <= 16 * MiB, f"the copy is not sparse: {st.st_blocks} blocks"
        with open(copy, "rb") as f:
            for i, off in enumerate(offsets):
                f.seek(off)
                assert f.read(MiB) == bytes([i + 1]) * MiB
            f.seek(100 * MiB)
            assert f.read(MiB) == bytes(MiB)
        assert qemu_info(copy)["format"] == "raw"
        assert not [n for n in os.listdir(other / "pool") if n.startswith(".")]
        command(p2 / "control", "stop")
