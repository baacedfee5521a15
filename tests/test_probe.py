"""imagefmt.probe_file: what a file in a pool directory is, from its header and one
stat, without qemu-img (what a scan of 100,000 files does per file). Plain files made
in tmp_path: a symlink, a FIFO and a directory are no volumes; a recorded format wins
over the header; a found file's header decides."""

from __future__ import annotations

import os
import subprocess

from storagefs.backends import imagefmt


def qcow2(path, size="1M") -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


def test_a_found_file_is_what_its_header_says(tmp_path):
    qcow2(tmp_path / "a")
    info = imagefmt.probe_file(str(tmp_path / "a"), "a")
    assert (info.format, info.capacity) == ("qcow2", 1 << 20)
    (tmp_path / "b").write_bytes(b"\0" * 4096)
    info = imagefmt.probe_file(str(tmp_path / "b"), "b")
    assert (info.format, info.capacity, info.physical) == ("raw", 4096, 4096)


def test_a_recorded_raw_format_wins_over_a_qcow2_header(tmp_path):
    qcow2(tmp_path / "a")
    size = (tmp_path / "a").stat().st_size
    info = imagefmt.probe_file(str(tmp_path / "a"), "a", "raw")
    assert (info.format, info.capacity) == ("raw", size)
    info = imagefmt.probe_file(str(tmp_path / "a"), "a", "vmdk")  # recorded, not found
    assert (info.format, info.capacity) == ("vmdk", 0)  # qemu-img will say


def test_links_fifos_directories_and_gone_files_are_no_volumes(tmp_path):
    qcow2(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")  # opening it must not wait for a writer
    os.mkdir(tmp_path / "dir")
    for name in ("link", "fifo", "dir", "gone"):
        for fmt in (None, "raw", "qcow2"):
            assert imagefmt.probe_file(str(tmp_path / name), name, fmt) is None
    names = [v.name for v in imagefmt.scan(str(tmp_path), {})]
    assert names == ["real"]
