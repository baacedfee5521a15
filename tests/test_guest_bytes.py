"""Issue 10, item 1 (and the <backingStore> part of item 3), on real mounts: what a
guest writes into a volume never chooses its format (SPEC "Never trust guest
bytes"). A volume storagefs made or was told about keeps its recorded format
(through refresh, inotify and remount), every qemu-img call names the format,
and a file found in a pool whose chain (backing file, qcow2 data file, vmdk
extents) leaves the pools is listed with its backing file shown, never opened by
a probe, and refused (EPERM) by clone, convert, resize, snapshot and wipe unless
a document names that backing store.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopdev import LoopSet, skip_reason
from mount_helpers import (
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    parse,
    qemu_info,
    read,
    read_bytes,
    run,
    write,
    write_errno,
)

SECRET = b"TOP-SECRET-HOST-DATA-7f3a\n" * 64
IN_OPEN = 0x20
IN_ACCESS = 0x01


class OpenWatch:
    """inotify on host files: tells whether anything opened or read them."""

    def __init__(self, *paths) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for p in paths:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(str(p)), IN_OPEN | IN_ACCESS)
            assert wd >= 0, os.strerror(ctypes.get_errno())

    def touched(self) -> bool:
        try:
            return bool(os.read(self.fd, 65536))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def qemu_create(*args) -> None:
    run(["qemu-img", "create", "-q", *[str(a) for a in args]])


def refresh(m, pool: str = "default") -> None:
    command(m.pool(pool) / "control", "refresh")


def no_secret_in(path) -> None:
    """The file, and what it holds as an image, carry none of the host's secret."""
    assert SECRET[:26] not in read_bytes(path)


def test_a_guest_written_qcow2_header_does_not_turn_a_raw_volume_into_qcow2(mounted, secret,
                                                                             tmp_path):
    """The reproduction of the issue, step by step."""
    v = mounted.vol("V.raw")
    os.mkdir(v)
    evil = tmp_path / "evil"
    qemu_create("-f", "qcow2", "-b", secret, "-F", "raw", evil, "1M")
    # the guest writes the header into its disk
    run(["dd", f"if={evil}", f"of={v / 'path'}", "conv=notrunc", "status=none"])
    watch = OpenWatch(secret)
    try:
        refresh(mounted)
        assert read(v / "format") == "raw\n"
        status = parse(read(v / "status.xml"))
        assert status.find("target/format").get("type") == "raw"
        assert status.find("backingStore") is None
        assert int(status.findtext("capacity")) == os.stat(v / "path").st_size
        config = parse(read(v / "config.xml"))
        assert config.find("target/format").get("type") == "raw"
        assert config.find("backingStore") is None
        command(v / "control", "clone NEW --format raw")
        command(v / "control", "clone NEW2.qcow2 --format qcow2")
        assert not watch.touched(), "something opened the host file the header names"
    finally:
        watch.close()
    new = mounted.vol("NEW")
    no_secret_in(new / "path")
    assert read_bytes(new / "path")[:4] == b"QFI\xfb"  # the guest's bytes, copied as bytes
    info = qemu_info(mounted.vol("NEW2.qcow2") / "path")
    assert "backing-filename" not in info
    out = tmp_path / "NEW2.raw"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
         mounted.vol("NEW2.qcow2") / "path", out])
    no_secret_in(out)
    # and it stays raw after a remount (the recorded format survives)
    mounted.remount()
    assert read(v / "format") == "raw\n"
    assert parse(read(v / "status.xml")).find("backingStore") is None


def test_recorded_format_wins_after_inotify_and_remount_for_every_way_of_making(mounted,
                                                                               secret,
                                                                               tmp_path):
    """mkdir, a document, a clone and a format change all record the format."""
    evil = tmp_path / "evil"
    qemu_create("-f", "qcow2", "-b", secret, "-F", "raw", evil, "1M")
    os.mkdir(mounted.vol("a"))
    os.mkdir(mounted.vol("b"))
    write(mounted.vol("b") / "config.xml",
          "<volume>\n  <name>b</name>\n  <capacity unit='G'>1</capacity>\n"
          "  <target>\n    <format type='raw'/>\n  </target>\n</volume>\n")
    command(mounted.vol("a") / "control", "clone c")
    os.mkdir(mounted.vol("d.qcow2"))
    write(mounted.vol("d.qcow2") / "config.xml",
          "<volume>\n  <name>d.qcow2</name>\n  <capacity unit='G'>1</capacity>\n"
          "  <target>\n    <format type='raw'/>\n  </target>\n</volume>\n")
    names = ("a", "b", "c", "d.qcow2")
    for name in names:
        assert read(mounted.vol(name) / "format") == "raw\n", name
        run(["dd", f"if={evil}", f"of={mounted.vol(name) / 'path'}", "conv=notrunc",
             "status=none"])
    # inotify sees the writes; give the probe worker its moment
    run(["sleep", "0.5"])
    for name in names:
        assert read(mounted.vol(name) / "format") == "raw\n", name
    mounted.remount()
    for name in names:
        assert read(mounted.vol(name) / "format") == "raw\n", name
        assert parse(read(mounted.vol(name) / "status.xml")).find("backingStore") is None


def test_recorded_formats_survive_undefining_and_redefining_the_pool(mounted, tmp_path):
    """rmdir of a pool removes its records; a pool defined again on the same target (by
    the same or another name) takes back its volumes' recorded formats, so a header a
    guest wrote meanwhile still chooses nothing. The header here names another volume
    of the same pool as its backing file (a chain inside the pools, which a probe
    would otherwise follow and a clone copy: another guest's data)."""
    target = tmp_path / "p1"
    pdir = define_pool(mounted, "p1", target)
    os.mkdir(pdir / "volumes" / "victim.raw")
    write(pdir / "volumes" / "victim.raw" / "path", b"VICTIM-DATA" * 1000)
    os.mkdir(pdir / "volumes" / "g2.img")
    evil = tmp_path / "evil"
    qemu_create("-f", "qcow2", "-b", target / "victim.raw", "-F", "raw", evil, "1M")
    run(["dd", f"if={evil}", f"of={target / 'g2.img'}", "conv=notrunc", "status=none"])
    assert read(pdir / "volumes" / "g2.img" / "format") == "raw\n"
    doc = read(pdir / "config.xml")
    for name in ("p1", "p2"):  # the same name again, then another name
        command(pdir / "control", "stop")
        os.rmdir(pdir)
        pdir = mounted.pool(name)
        os.mkdir(pdir)
        write(pdir / "config.xml", doc.replace("<name>p1</name>", f"<name>{name}</name>"))
        command(pdir / "control", "start")
        g2 = pdir / "volumes" / "g2.img"
        assert read(g2 / "format") == "raw\n", name
        assert parse(read(g2 / "status.xml")).find("backingStore") is None
        command(g2 / "control", f"clone copy-{name}.raw")
        assert b"VICTIM-DATA" not in read_bytes(pdir / "volumes" / f"copy-{name}.raw" / "path")
        os.rmdir(pdir / "volumes" / f"copy-{name}.raw")
    mounted.remount()
    assert read(mounted.pool("p2") / "volumes" / "g2.img" / "format") == "raw\n"


def test_a_dropped_image_whose_backing_file_leaves_the_pools_is_shown_and_never_followed(
        mounted, secret):
    dropped = mounted.images / "dropped.qcow2"
    qemu_create("-f", "qcow2", "-b", secret, "-F", "raw", dropped, "1M")
    watch = OpenWatch(secret)
    try:
        refresh(mounted)
        v = mounted.vol("dropped.qcow2")
        assert read(v / "format") == "qcow2\n"  # a found file may be probed
        status = parse(read(v / "status.xml"))
        assert status.findtext("backingStore/path") == str(secret)
        for cmd in ("clone copy", "clone copy.raw --format raw", "resize 2M",
                    "snapshot s1", "wipe"):
            code, call = write_errno(v / "control", cmd + "\n")
            assert (code, call) == (errno.EPERM, "write"), (cmd, code, call)
            line = assert_one_error_line(v)
            assert str(secret) in line and "no storage pool" in line, line
        code, _ = write_errno(v / "config.xml", (
            "<volume>\n  <name>dropped.qcow2</name>\n  <capacity unit='M'>2</capacity>\n"
            "  <target>\n    <format type='qcow2'/>\n  </target>\n</volume>\n"))
        assert code == errno.EPERM
        assert str(secret) in assert_one_error_line(v)
        with pytest.raises(OSError) as exc:
            os.mkdir(v / "snapshots" / "s2")
        assert exc.value.errno == errno.EPERM
        assert not watch.touched(), "a probe or an operation opened the backing file"
    finally:
        watch.close()
    assert sorted(os.listdir(mounted.pool() / "volumes")) == ["dropped.qcow2"]
    assert qemu_info(dropped)["virtual-size"] == MiB  # not resized
    assert "snapshots" not in qemu_info(dropped)


def test_the_backing_store_of_a_dropped_image_shows_after_a_mount_and_a_start(mounted,
                                                                             secret):
    """The details qemu-img tells (the backing store) of images found at a mount or a
    pool start come in the background: they used to be dropped when the pool's tasks
    started, so status.xml lacked <backingStore> until a refresh."""
    import time

    qemu_create("-f", "qcow2", "-b", secret, "-F", "raw", mounted.images / "bk.qcow2", "1M")
    status = mounted.vol("bk.qcow2") / "status.xml"

    def shown() -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if parse(read(status)).find("backingStore") is not None:
                return True
            time.sleep(0.1)
        return False

    mounted.remount()
    assert shown()
    command(mounted.pool() / "control", "stop")
    command(mounted.pool() / "control", "start")
    assert shown()
    assert parse(read(status)).findtext("backingStore/path") == str(secret)


def test_a_dropped_image_with_a_data_file_or_vmdk_extent_outside_is_never_followed(mounted,
                                                                                  secret):
    data_file = mounted.images.parent / "data-outside"
    qemu_create("-f", "qcow2", "-o", f"data_file={data_file}", mounted.images / "df.qcow2",
                "1M")
    (mounted.images / "desc.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n'
        f'RW {len(SECRET) // 512} FLAT "{secret}" 0\n\nddb.virtualHWVersion = "4"\n')
    watch = OpenWatch(secret, data_file)
    try:
        refresh(mounted)
        for name, outside in (("df.qcow2", data_file), ("desc.vmdk", secret)):
            v = mounted.vol(name)
            read(v / "status.xml")
            code, _ = write_errno(v / "control", "clone copy-of-it --format raw\n")
            assert code == errno.EPERM, name
            assert str(outside) in assert_one_error_line(v)
        assert not watch.touched(), "a probe or an operation opened a file outside the pools"
    finally:
        watch.close()
    assert "copy-of-it" not in os.listdir(mounted.pool() / "volumes")


def test_a_chain_inside_the_pools_is_followed(mounted):
    """A dropped overlay over a dropped base in the same pool clones fine."""
    base = mounted.images / "base.raw"
    qemu_create("-f", "raw", base, "4M")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 0 1M", base])
    qemu_create("-f", "qcow2", "-b", base, "-F", "raw", mounted.images / "top.qcow2", "4M")
    refresh(mounted)
    top = mounted.vol("top.qcow2")
    command(top / "control", "clone flat.raw --format raw")
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x42 0 1M",
               mounted.vol("flat.raw") / "path"]).stdout
    assert "read 1048576/1048576" in out


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_a_document_that_names_the_backing_store_allows_the_chain(mounted, tmp_path):
    """A block device outside every pool is followed once the volume's config.xml names
    it as <backingStore> (and only then)."""
    with LoopSet(tmp_path) as loops:
        dev = loops.make("8M").path
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 1M", dev])
        dropped = mounted.images / "over-dev.qcow2"
        qemu_create("-f", "qcow2", "-b", dev, "-F", "raw", dropped, "8M")
        refresh(mounted)
        v = mounted.vol("over-dev.qcow2")
        code, _ = write_errno(v / "control", "clone c1.raw --format raw\n")
        assert code == errno.EPERM
        assert dev in assert_one_error_line(v)
        write(v / "config.xml",
              "<volume>\n  <name>over-dev.qcow2</name>\n  <capacity unit='M'>8</capacity>\n"
              "  <target>\n    <format type='qcow2'/>\n  </target>\n"
              f"  <backingStore>\n    <path>{dev}</path>\n    <format type='raw'/>\n"
              "  </backingStore>\n</volume>\n")
        command(v / "control", "clone c1.raw --format raw")
        out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x33 0 1M",
                   mounted.vol("c1.raw") / "path"]).stdout
        assert "read 1048576/1048576" in out
        os.rmdir(mounted.vol("c1.raw"))
        os.rmdir(v)


def test_every_qemu_img_call_names_the_format(mounted):
    """The log lists each tool run: every qemu-img call has -f (or --image-opts, which
    names the driver), and every backing file its -F."""
    v = mounted.vol("q.qcow2")
    os.mkdir(v)
    command(v / "control", "resize 2G")
    command(v / "control", "snapshot s1")
    command(v / "control", "revert s1")
    command(v / "control", "delete-snapshot s1")
    command(v / "control", "clone q2.vmdk --format vmdk")
    command(v / "control", "clone q3.qcow2")
    command(v / "control", "wipe")
    base = mounted.vol("base.raw")
    os.mkdir(base)
    ov = mounted.vol("ov.qcow2")
    os.mkdir(ov)
    write(ov / "config.xml",
          "<volume>\n  <name>ov.qcow2</name>\n  <capacity unit='G'>1</capacity>\n"
          "  <target>\n    <format type='qcow2'/>\n  </target>\n  <backingStore>\n"
          f"    <path>{os.path.realpath(base / 'path')}</path>\n    <format type='raw'/>\n"
          "  </backingStore>\n</volume>\n")
    command(mounted.pool() / "control", "refresh")
    calls = re.findall(r"running (qemu-img .*)", mounted.log())
    verbs = {c.split()[1] for c in calls}
    assert {"create", "info", "resize", "snapshot", "convert"} <= verbs, verbs
    for call in calls:
        argv = call.split()
        assert "-f" in argv or "--image-opts" in argv, call
        if "-b" in argv:
            assert "-F" in argv, call
        if "--image-opts" in argv:
            assert any(a.startswith("driver=") for a in argv), call


def test_backing_store_outside_the_pools_is_refused(mounted, secret):
    """item 3: a <backingStore> that is neither in a pool nor a block device."""
    v = mounted.vol("ov.qcow2")
    os.mkdir(v)
    before = read(v / "config.xml")
    alias = mounted.images.parent / "alias-into-mount"
    alias.symlink_to(mounted.pool() / "volumes")
    for path, why in ((secret, "neither a volume in a storage pool nor a block device"),
                      (mounted.vol("ov.qcow2") / "path", "inside the storagefs mount"),
                      (alias / "x", "neither a volume")):
        doc = ("<volume>\n  <name>ov.qcow2</name>\n  <capacity unit='M'>8</capacity>\n"
               "  <target>\n    <format type='qcow2'/>\n  </target>\n  <backingStore>\n"
               f"    <path>{path}</path>\n    <format type='raw'/>\n  </backingStore>\n"
               "</volume>\n")
        code, call = write_errno(v / "config.xml", doc)
        assert (code, call) == (errno.EPERM, "write"), path
        assert why in assert_one_error_line(v)
        assert read(v / "config.xml") == before
        assert "backing-filename" not in qemu_info(v / "path")


def test_vmdk_descriptor_extents_are_read_without_qemu(tmp_path):
    from storagefs.backends.imagefmt import vmdk_extents

    desc = tmp_path / "d.vmdk"
    desc.write_text('# Disk DescriptorFile\ncreateType="twoGbMaxExtentFlat"\n'
                    'RW 8 FLAT "d-f001.vmdk" 0\nRDONLY 8 SPARSE "/abs/x"\n'
                    'NOACCESS 8 ZERO\n')
    assert vmdk_extents(str(desc)) == [str(tmp_path / "d-f001.vmdk"), "/abs/x"]
    plain = tmp_path / "p.vmdk"
    qemu_create("-f", "vmdk", plain, "1M")
    assert vmdk_extents(str(plain)) == []


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(st.characters(blacklist_characters='"\n\r\0',
                                            blacklist_categories=("Cs",)),
                              min_size=1, max_size=40), max_size=5),
       junk=st.lists(st.text(max_size=30).filter(lambda s: '"' not in s), max_size=4))
def test_vmdk_extents_parser_finds_every_extent(tmp_path_factory, names, junk):
    from storagefs.backends.imagefmt import vmdk_extents

    d = tmp_path_factory.mktemp("vmdk")
    lines = ["# Disk DescriptorFile", *[f"# {j}" for j in junk]]
    lines += [f'RW {i + 1} FLAT "{n}" 0' for i, n in enumerate(names)]
    (d / "x.vmdk").write_bytes("\n".join(lines).encode() + b"\n")
    got = vmdk_extents(str(d / "x.vmdk"))
    assert got == [os.path.join(str(d), n) for n in names]
