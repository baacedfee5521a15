"""Issue 12, zfs: pools of type ``zfs`` on a real mount against a real ZFS (zfs-fuse,
started by tests/server_zfs.py), with file vdevs made by each test.

zfs-fuse cannot make zvols (``zfs create -V``: Function not implemented): a zvol is
refused with ENOTSUP and zfs's reason; every other operation runs for real on file
system datasets (``<volume type='dir'>``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest
import trio
from mount_helpers import (
    answer_within,
    assert_one_error_line,
    assert_valid,
    command,
    ls_names,
    read,
    read_bytes,
    run,
    write,
    write_errno,
    xml_value,
)

from storagefs.backends.zfs_sources import find_sources
from storagefs.xml.pool import parse_pool

#: the zfs-fuse session fixture and the per-test helper ``zfs`` (tests/server_zfs.py)
pytest_plugins = ["server_zfs"]

MiB = 1024**2
LIMIT = 6  # seconds: the storage time limit of the mounts that freeze zfs-fuse
ANSWER = 2.5  # a call "answers" when it returns within this (well below LIMIT)


def pool_doc(name: str, zpool: str, devices: list[str]) -> str:
    devs = "".join(f"    <device path='{d}'/>\n" for d in devices)
    return (f"<pool type='zfs'>\n  <name>{name}</name>\n  <source>\n    <name>{zpool}</name>\n"
            f"{devs}  </source>\n</pool>\n")


def dataset_doc(name: str, capacity: int = 16 * MiB) -> str:
    return (f"<volume type='dir'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n</volume>\n")


def zvol_doc(name: str, capacity: int) -> str:
    return (f"<volume type='block'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n</volume>\n")


def define(m, name: str, zpool: str, devices: list[str]):
    p = m.pool(name)
    os.mkdir(p)
    write(p / "config.xml", pool_doc(name, zpool, devices))
    return p


def state(p) -> str:
    return read(p / "state").strip()


def make_dataset(p, name: str, capacity: int = 16 * MiB):
    vol = p / "volumes" / name
    os.mkdir(vol)
    write(vol / "config.xml", dataset_doc(name, capacity))
    return vol


def until(cond, seconds: float = 5.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def within(fn, seconds: float = ANSWER):
    return answer_within(fn, seconds)


def test_zfs_build_start_sizes_datasets_snapshots_stop_delete(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    p = define(mounted, "zp", zp, [dev])

    # no such zpool yet: start says so and changes nothing
    code, call = write_errno(p / "state", "running\n")
    assert (code, call) == (errno.ENOENT, "write")
    assert zp in assert_one_error_line(p) and state(p) == "inactive"

    command(p / "control", "build")
    assert zfs.imported(zp)
    # a plain build never writes over a device that holds a zpool
    code, call = write_errno(p / "control", "build\n")
    assert code in (errno.EBUSY, errno.EEXIST) and call == "write"
    assert zp in assert_one_error_line(p)

    command(p / "state", "running")
    assert state(p) == "running"
    status = read_bytes(p / "status.xml")
    assert_valid(status, "storagepool")
    assert xml_value(status, "/pool/source/name") == zp
    assert xml_value(status, "/pool/target/path") == f"/dev/zvol/{zp}"
    used, avail = zfs.get(zp, "used"), zfs.get(zp, "available")
    assert int(read(p / "capacity")) == used + avail
    assert int(read(p / "available")) == avail
    assert int(read(p / "allocation")) == used

    # a zvol: ENOTSUP with zfs's reason, nothing made
    code, call = write_errno(p / "control", "create zv1 16M\n")
    assert (code, call) == (errno.ENOTSUP, "write")
    line = assert_one_error_line(p)
    assert "not implemented" in line.lower() and "zvol" in line, line
    assert not zfs.exists(f"{zp}/zv1")
    zv = p / "volumes" / "zv2"
    os.mkdir(zv)  # no default capacity: a pending volume, made by its document
    code, _ = write_errno(zv / "config.xml", zvol_doc("zv2", 16 * MiB))
    assert code == errno.ENOTSUP
    assert not zfs.exists(f"{zp}/zv2")
    os.rmdir(zv)

    # a dataset, from its document: refquota = capacity, exact bytes
    vol = make_dataset(p, "d1", 32 * MiB)
    assert zfs.get(f"{zp}/d1", "refquota") == 32 * MiB
    assert int(read(vol / "capacity")) == 32 * MiB
    assert read(vol / "key").strip() == f"{zp}/d1"
    vstatus = read_bytes(vol / "status.xml")
    assert_valid(vstatus, "storagevol")
    assert xml_value(vstatus, "/volume/@type") == "dir"
    # grow it: resize and a larger document
    command(vol / "control", "resize 48M")
    assert zfs.get(f"{zp}/d1", "refquota") == 48 * MiB
    assert int(read(vol / "capacity")) == 48 * MiB
    code, _ = write_errno(vol / "control", "resize 8M\n")
    assert code == errno.EINVAL
    assert zfs.get(f"{zp}/d1", "refquota") == 48 * MiB
    write(vol / "config.xml", dataset_doc("d1", 64 * MiB))
    assert zfs.get(f"{zp}/d1", "refquota") == 64 * MiB
    # its type never changes
    code, _ = write_errno(vol / "config.xml", zvol_doc("d1", 64 * MiB))
    assert code == errno.EINVAL
    assert "type" in assert_one_error_line(vol)

    # names zfs cannot hold are refused, nothing is made
    code = None
    try:
        os.mkdir(p / "volumes" / "bad name")
    except OSError as exc:
        code = exc.errno
    assert code == errno.EINVAL
    assert set(zfs.datasets(zp)) == {zp, f"{zp}/d1"}

    # snapshots: create, list, revert, delete
    os.mkdir(vol / "snapshots" / "s1")
    assert zfs.exists(f"{zp}/d1@s1")
    assert ls_names(vol / "snapshots") == {"s1"}
    command(vol / "control", "snapshot s2")
    assert zfs.exists(f"{zp}/d1@s2")
    code, _ = write_errno(vol / "control", "revert s1\n")  # s2 is later: refused
    assert code == errno.EBUSY
    assert "s2" in assert_one_error_line(vol)
    assert zfs.exists(f"{zp}/d1@s2")
    command(vol / "control", "revert s2")
    os.rmdir(vol / "snapshots" / "s2")
    assert not zfs.exists(f"{zp}/d1@s2")
    assert ls_names(vol / "snapshots") == {"s1"}

    # rmdir destroys the dataset with its snapshots
    make_dataset(p, "d2")
    os.rmdir(vol)
    assert not zfs.exists(f"{zp}/d1") and not zfs.exists(f"{zp}/d1@s1")
    assert ls_names(p / "volumes") == {"d2"}

    # stop leaves the zpool imported; start lists it again
    command(p / "state", "inactive")
    assert ls_names(p / "volumes") == set()
    assert zfs.imported(zp)
    command(p / "state", "running")
    assert ls_names(p / "volumes") == {"d2"}

    # delete destroys the zpool (or exports it when zfs-fuse keeps it busy, and says so)
    command(p / "state", "inactive")
    code, _ = write_errno(p / "control", "delete\n")
    assert not zfs.imported(zp)
    if code is not None:
        assert code == errno.EBUSY
        assert "exported" in assert_one_error_line(p)
    os.rmdir(p)


def test_zfs_build_refuses_a_device_with_data_unless_overwrite(mounted, zfs):
    dev = zfs.vdev("128M")
    run(["mkfs.ext4", "-q", "-F", dev])
    zp = zfs.name()
    p = define(mounted, "zp", zp, [dev])
    code, call = write_errno(p / "control", "build\n")
    assert (code, call) == (errno.EBUSY, "write")
    line = assert_one_error_line(p)
    assert "ext4" in line and "overwrite" in line, line
    assert not zfs.imported(zp)
    command(p / "control", "build overwrite")
    assert zfs.imported(zp)
    command(p / "state", "running")
    assert state(p) == "running"


def test_zfs_datasets_made_outside_show_at_the_next_ls(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    zfs.zpool("create", zp, dev)
    p = define(mounted, "zp", zp, [dev])
    command(p / "state", "running")
    assert ls_names(p / "volumes") == set()

    zfs.zfs("create", "-o", "refquota=16777216", f"{zp}/outside")
    assert until(lambda: "outside" in ls_names(p / "volumes"), 2.5), "not listed in 2.5 s"
    vol = p / "volumes" / "outside"
    assert int(read(vol / "capacity")) == 16 * MiB
    zfs.zfs("snapshot", f"{zp}/outside@snap")
    assert until(lambda: ls_names(vol / "snapshots") == {"snap"}, 2.5)
    # zfs-fuse answers "dataset is busy" now and then (its own mount of the dataset);
    # the outside program tries again, as an administrator would
    assert until(lambda: zfs.zfs("destroy", "-r", f"{zp}/outside", check=False).returncode
                 == 0, 10), "zfs destroy kept saying busy"
    assert until(lambda: "outside" not in ls_names(p / "volumes"), 2.5), "still listed"
    # refresh lists at once
    zfs.zfs("create", f"{zp}/again")
    command(p / "control", "refresh")
    assert ls_names(p / "volumes") == {"again"}
    # rmdir never destroys datasets below a volume
    zfs.zfs("create", f"{zp}/again/child")
    try:
        os.rmdir(p / "volumes" / "again")
        code = None
    except OSError as exc:
        code = exc.errno
    assert code == errno.EBUSY
    assert f"{zp}/again/child" in assert_one_error_line(p / "volumes" / "again")
    assert zfs.exists(f"{zp}/again/child")


@pytest.mark.log_allows("storage became inaccessible", "figures not refreshed")
def test_zfs_exported_behind_storagefs_is_inaccessible_then_recovers(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    zfs.zpool("create", zp, dev)
    zfs.zfs("create", f"{zp}/d1")
    p = define(mounted, "zp", zp, [dev])
    command(p / "state", "running")
    assert ls_names(p / "volumes") == {"d1"}

    zfs.zpool("export", zp)
    code, call = write_errno(p / "control", "refresh\n")
    assert code == errno.ENOENT and call == "write"
    assert state(p) == "inaccessible"
    line = assert_one_error_line(p)
    assert zp in line and "not imported" in line, line
    assert ls_names(p / "volumes") == set()

    # imported again outside storagefs: refresh brings the pool back
    zfs.zpool("import", "-d", str(zfs.dir), zp)
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert ls_names(p / "volumes") == {"d1"}

    # exported again: stop, then start imports it from the source device's directory
    zfs.zpool("export", zp)
    assert write_errno(p / "control", "refresh\n")[0] == errno.ENOENT
    assert state(p) == "inaccessible"
    command(p / "state", "inactive")
    command(p / "state", "running")
    assert state(p) == "running" and zfs.imported(zp)
    assert ls_names(p / "volumes") == {"d1"}


@pytest.mark.log_allows("storage became inaccessible", "returned after", "figures not refreshed")
def test_zfs_daemon_stopped_makes_the_pool_inaccessible_and_nothing_hangs(
        mount_factory, zfs, zfs_server, tmp_path):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    zfs.zpool("create", zp, dev)
    zfs.zfs("create", f"{zp}/d1")
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))
    p = define(m, "zp", zp, [dev])
    command(p / "state", "running")
    os.mkdir(m.vol("other"))
    before = read(p / "volumes" / "d1" / "status.xml")

    with zfs_server.frozen():
        for what, fn in {
            "ls pools/": lambda: os.listdir(m.pools),
            "ls -l default/volumes": lambda: [os.lstat(x) for x in
                                              (m.pool() / "volumes").iterdir()],
            "cat zp/status.xml": lambda: read(p / "status.xml"),
            "cat zp/volumes/d1/status.xml": lambda: read(p / "volumes" / "d1" /
                                                         "status.xml"),
        }.items():
            answered, res = within(fn)
            assert answered and res[0] == "ok", f"{what}: {res}"
        assert read(p / "volumes" / "d1" / "status.xml") == before  # what it last knew
        # while the refresh waits on the frozen daemon, another pool answers: the
        # slowest of its reads is printed (and must stay far below the time limit)
        lat: list[float] = []
        stop = threading.Event()

        def other_pool() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                os.listdir(m.pool() / "volumes")
                read(m.vol("other") / "status.xml")
                lat.append(time.monotonic() - t0)
                time.sleep(0.05)

        reader = threading.Thread(target=other_pool, daemon=True)
        reader.start()
        started = time.monotonic()
        answered, res = within(lambda: command(p / "control", "refresh"), LIMIT + 10)
        stop.set()
        reader.join(ANSWER)
        assert answered, "refresh did not return within the time limit"
        assert time.monotonic() - started < LIMIT + 8
        assert lat and max(lat) < 1.0, lat
        print(f"other pool during the hung refresh: {len(lat)} reads, max "
              f"{max(lat) * 1000:.1f} ms, median {sorted(lat)[len(lat) // 2] * 1000:.1f} ms")
        assert res[0] == "err" and res[1].errno in (errno.EIO, errno.EBUSY,
                                                    errno.ETIMEDOUT), res
        assert state(p) == "inaccessible"
        assert "ZFS daemon" in read(p / "error") or "not responding" in read(p / "error")
        answered, res = within(lambda: os.listdir(m.pool() / "volumes"))
        assert answered and res[0] == "ok", res
        answered, res = within(lambda: os.listdir(p / "volumes"))
        assert answered and res == ("ok", ["d1"]), res  # the last known datasets stay
        # new operations on it fail at once
        answered, res = within(lambda: write_errno(p / "control", "create x 1M\n"))
        assert answered and res[1][0] in (errno.EIO, errno.EBUSY), res
    # zfs-fuse answers again: the pool recovers on refresh (or start)
    assert until(lambda: zfs.imported(zp), 10)
    for _ in range(3):
        if write_errno(p / "control", "refresh\n")[0] is None:
            break
        time.sleep(1)
    if state(p) != "running":
        command(p / "control", "start")
    assert state(p) == "running"
    assert ls_names(p / "volumes") == {"d1"}


def test_zfs_find_sources_lists_imported_and_importable_pools(mounted, zfs):
    zp, exported = zfs.name(), zfs.name()
    d1, d2 = zfs.vdev("128M"), zfs.vdev("128M")
    zfs.zpool("create", zp, d1)
    zfs.zpool("create", exported, d2)
    zfs.zpool("export", exported)

    docs = trio.run(find_sources, str(zfs.dir))
    defs = {d.source.name: d for d in map(parse_pool, [x.encode() for x in docs])}
    assert zp in defs and exported in defs, docs
    assert [x.path for x in defs[zp].source.devices] == [d1]
    assert [x.path for x in defs[exported].source.devices] == [d2]
    for doc in docs:
        assert_valid(doc, "storagepool")
    # a document is ready for config.xml: the exported pool starts (it is imported)
    doc = next(d for d in docs if f"<name>{exported}</name>" in d)
    name = defs[exported].name
    p = mounted.pool(name)
    os.mkdir(p)
    write(p / "config.xml", doc)
    command(p / "state", "running")
    assert zfs.imported(exported)


def test_zfs_dataset_source_builds_and_deletes_a_dataset(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    zfs.zpool("create", zp, dev)
    p = mounted.pool("zds")
    os.mkdir(p)
    write(p / "config.xml", pool_doc("zds", f"{zp}/vms", []))
    command(p / "control", "build")
    assert zfs.exists(f"{zp}/vms")
    command(p / "state", "running")
    make_dataset(p, "guest")
    assert zfs.exists(f"{zp}/vms/guest")
    assert ls_names(p / "volumes") == {"guest"}
    command(p / "state", "inactive")
    command(p / "control", "delete")
    assert not zfs.exists(f"{zp}/vms") and zfs.imported(zp)


@pytest.mark.parametrize("doc", ["<pool type='zfs'><name>x</name><source><name>bad name"
                                 "</name></source></pool>\n"])
def test_zfs_invalid_source_name_is_refused(mounted, zfs, doc):
    p = mounted.pool("x")
    os.mkdir(p)
    write(p / "config.xml", doc)
    code, _ = write_errno(p / "control", "start\n")
    assert code == errno.EINVAL
    assert "invalid" in assert_one_error_line(p)


def test_zfs_delete_of_a_busy_pool_is_ebusy_and_changes_nothing(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    p = define(mounted, "zp", zp, [dev])
    command(p / "control", "build")
    command(p / "state", "running")
    vol = make_dataset(p, "d1")
    where = os.readlink(vol / "path")
    assert os.path.ismount(where)
    command(p / "state", "inactive")
    holder = subprocess.Popen(["sleep", "60"], cwd=where)  # a shell's cwd in a dataset
    try:
        code, call = write_errno(p / "control", "delete\n")
        assert (code, call) == (errno.EBUSY, "write")
        line = assert_one_error_line(p)
        assert "busy" in line and zp in line, line
        assert zfs.imported(zp) and zfs.exists(f"{zp}/d1")
    finally:
        holder.kill()
        holder.wait()
    command(p / "control", "delete")
    assert not zfs.imported(zp)


def test_zfs_pool_runs_again_after_a_remount(mounted, zfs):
    zp = zfs.name()
    dev = zfs.vdev("128M")
    zfs.zpool("create", zp, dev)
    p = define(mounted, "zp", zp, [dev])
    command(p / "state", "running")
    make_dataset(p, "d1", 24 * MiB)
    mounted.remount()
    assert state(p) == "running"
    assert ls_names(p / "volumes") == {"d1"}
    assert int(read(p / "volumes" / "d1" / "capacity")) == 24 * MiB
