"""rbd pools against a real single-node Ceph cluster (tests/server_ceph.py): images as
volumes, snapshots, copies, cephx keys from secrets/, and a cluster that stops
answering (issue 13)."""

from __future__ import annotations

import errno
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mount_helpers import (
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    read,
    run,
    write,
    write_errno,
    xml_value,
)
from server_ceph import POOL, ceph_cephx, ceph_cluster  # noqa: F401

from storagefs.backends.rbdtool import ceph_reason, key_text, parse_locks, parse_ls_long

SECRET = "6f1a4c2e-3b5d-4e7f-8a9b-0c1d2e3f4a5b"


def rbd_xml(name: str, cluster, pool: str = POOL, auth: str = "") -> str:
    return (f"<pool type='rbd'>\n  <name>{name}</name>\n  <source>\n    <name>{pool}</name>\n"
            f"    <host name='127.0.0.1' port='{cluster.v1}'/>\n{auth}  </source>\n</pool>\n")


def define_rbd(m, name: str, cluster, auth: str = "", start: bool = True):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", rbd_xml(name, cluster, auth=auth))
    if start:
        command(pdir / "control", "start")
    return pdir


def images(cluster) -> set[str]:
    return set(cluster.rbd("ls", "-p", POOL).stdout.split())


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


# ---- parsers of the tools' output (hypothesis) ------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                         c, max_size=4),
                     max_leaves=20)


@given(_json)
def test_parsers_take_any_json(data):
    parse_ls_long(data)
    parse_locks(data)


@given(st.text(max_size=200), st.integers(0, 300))
def test_ceph_reason_of_any_stderr(text, rc):
    reason, code = ceph_reason(text, rc)
    assert 0 < code < 4096 and "\n" not in reason


@given(st.binary(max_size=64))
def test_lister_decoders_take_any_bytes(data):
    import struct

    from storagefs.backends.rbd_lister import decode_directory_id, decode_snapshot

    decode_directory_id(data + b"\0\0\0\0")
    try:
        snap = decode_snapshot(data)
    except struct.error:
        return
    assert set(snap) == {"snapshot", "snapshot_id", "size"}


def test_lister_decodes_cls_rbd_snap():
    import struct

    from storagefs.backends.rbd_lister import decode_snapshot

    value = bytes([8, 1]) + struct.pack("<I", 99) + struct.pack("<Q", 4) + \
        struct.pack("<I", 2) + b"s1" + struct.pack("<Q", 10 * MiB) + b"rest"
    assert decode_snapshot(value) == {"snapshot": "s1", "snapshot_id": 4, "size": 10 * MiB}


@given(st.lists(st.sampled_from(["--linked", "--purge-snapshots", "--pool", "p", "new",
                                  "--format", "raw", "x"]), max_size=6),
       st.sampled_from(["clone", "delete"]))
def test_clone_and_delete_lines_parse_or_einval(words, verb):
    from storagefs.errors import StorageError
    from storagefs.parsing import Clone, DeleteVolume, parse_volume_command

    try:
        cmd = parse_volume_command(" ".join([verb, *words]))
    except StorageError as exc:
        assert exc.errno == errno.EINVAL
        return
    if verb == "delete":
        assert cmd == DeleteVolume(words == ["--purge-snapshots"])
    else:
        assert isinstance(cmd, Clone) and cmd.linked == ("--linked" in words)
        assert words.count("--linked") == 1 or not cmd.linked


def test_ceph_reason_picks_the_tools_line():
    err = ("2026-12-01T13:25:02.318+0000 7f25 -1 auth: unable to find a keyring: (2) No such "
           "file or directory\nrbd: create error: (17) File exists\n")
    assert ceph_reason(err) == ("rbd: create error: (17) File exists", errno.EEXIST)
    assert ceph_reason("rbd: image has snapshots - these must be deleted", 39)[1] == \
        errno.ENOTEMPTY


def test_ls_long_groups_snapshots_with_their_image():
    rows = parse_ls_long([
        {"image": "a", "id": "1", "size": 10, "format": 2},
        {"image": "a", "id": "1", "snapshot": "s1", "snapshot_id": 4, "size": 10,
         "protected": "true"},
        {"image": "c", "id": "2", "size": 5, "parent": {"pool": "p", "image": "a",
                                                        "snapshot": "s1"}}])
    assert [(r.name, r.size, [s["name"] for s in r.snapshots]) for r in rows] == \
        [("a", 10, ["s1"]), ("c", 5, [])]
    assert rows[1].parent == "p/a@s1"


def test_key_text_accepts_text_or_bytes():
    import base64
    text = "AQBhSWZnAAAAABAAm1ZxQk8hUuYmJ6n3GJtJCw=="
    assert key_text(text.encode() + b"\n") == text
    assert key_text(base64.b64decode(text)) == text


# ---- a pool of images -------------------------------------------------------------------------
def test_images_are_volumes(mounted, ceph_cluster):  # noqa: F811
    m, c = mounted, ceph_cluster
    p = define_rbd(m, "r1", c)
    assert read(p / "state") == "running\n"
    vols = p / "volumes"
    command(p / "control", "create disk1 16M")
    assert "disk1" in images(c)
    st_xml = read(vols / "disk1" / "status.xml")
    assert xml_value(st_xml, "/volume/@type") == "network"
    assert xml_value(st_xml, "/volume/key") == f"{POOL}/disk1"
    assert xml_value(st_xml, "/volume/target/path") == f"{POOL}/disk1"
    assert xml_value(st_xml, "/volume/target/format/@type") == "raw"
    assert "<physical" not in st_xml  # libvirt's rbd backend sets none
    assert read(vols / "disk1" / "capacity") == f"{16 * MiB}\n"
    assert int(xml_value(read(p / "status.xml"), "/pool/capacity")) > 0

    # the same name again: EEXIST, Ceph's reason, nothing changed
    code, _ = write_errno(p / "control", "create disk1 8M\n")
    assert code == errno.EEXIST
    assert "exists" in assert_one_error_line(p)
    assert read(vols / "disk1" / "capacity") == f"{16 * MiB}\n"

    # resize: growing works, shrinking needs --shrink
    command(vols / "disk1" / "control", "resize 32M")
    assert c.rbd_json("info", f"{POOL}/disk1")["size"] == 32 * MiB
    code, _ = write_errno(vols / "disk1" / "control", "resize 8M\n")
    assert code == errno.EINVAL
    assert "--shrink" in assert_one_error_line(vols / "disk1")
    command(vols / "disk1" / "control", "resize --shrink 8M")
    assert read(vols / "disk1" / "capacity") == f"{8 * MiB}\n"

    # snapshots: create, revert (data comes back), protected ones are refused
    url = f"rbd:{POOL}/disk1:conf={c.conf}"
    run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", url])
    os.mkdir(vols / "disk1" / "snapshots" / "before")
    assert "before" in {s["name"] for s in c.rbd_json("snap", "ls", f"{POOL}/disk1")}
    run(["qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 1M", url])
    command(vols / "disk1" / "control", "revert before")
    run(["qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", url])
    c.rbd("snap", "protect", f"{POOL}/disk1@before")
    err = write_errno(vols / "disk1" / "control", "delete-snapshot before\n")[0]
    assert err == errno.EBUSY
    assert "protected" in assert_one_error_line(vols / "disk1")
    # an image with snapshots is not removed (Ceph's reason)
    with pytest.raises(OSError) as exc:
        os.rmdir(vols / "disk1")
    assert exc.value.errno == errno.ENOTEMPTY
    assert "snapshots" in assert_one_error_line(vols / "disk1")
    c.rbd("snap", "unprotect", f"{POOL}/disk1@before")
    os.rmdir(vols / "disk1" / "snapshots" / "before")
    assert c.rbd_json("snap", "ls", f"{POOL}/disk1") == []

    # wipe writes zeros over the data
    command(vols / "disk1" / "control", "wipe")
    run(["qemu-io", "-f", "raw", "-c", "read -P 0 0 1M", url])

    # clone: a full copy under a hidden name, renamed into place
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", url])
    command(vols / "disk1" / "control", "clone disk2")
    assert {"disk1", "disk2"} <= set(os.listdir(vols))
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 64k", f"rbd:{POOL}/disk2:conf={c.conf}"])
    assert not [n for n in images(c) if n.startswith(".")]

    os.rmdir(vols / "disk2")
    os.rmdir(vols / "disk1")
    assert not {"disk1", "disk2"} & images(c)


def test_clone_from_a_dir_pool_into_rbd(mounted, ceph_cluster, tmp_path):  # noqa: F811
    m, c = mounted, ceph_cluster
    r = define_rbd(m, "r2", c)
    d = define_pool(m, "files", tmp_path / "files")
    command(d / "control", "create src.qcow2 4M --format qcow2")
    img = tmp_path / "files" / "src.qcow2"
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 64k", str(img)])
    command(d / "volumes" / "src.qcow2" / "control", "clone fromdir --pool r2 --format raw")
    assert "fromdir" in os.listdir(r / "volumes")
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 0 64k",
         f"rbd:{POOL}/fromdir:conf={c.conf}"])
    os.rmdir(r / "volumes" / "fromdir")


def test_images_made_elsewhere_show_up_by_polling(mounted, ceph_cluster):  # noqa: F811
    m, c = mounted, ceph_cluster
    p = define_rbd(m, "r3", c)
    vols = p / "volumes"
    os.listdir(vols)  # someone reads the pool: it is polled
    c.rbd("create", f"{POOL}/outside", "--size", "4M")
    assert wait_for(lambda: "outside" in os.listdir(vols), 3.0)
    assert read(vols / "outside" / "capacity") == f"{4 * MiB}\n"
    c.rbd("rm", "--no-progress", f"{POOL}/outside")
    assert wait_for(lambda: "outside" not in os.listdir(vols), 3.0)


@pytest.mark.parametrize("how", ["lister", "cli"])
def test_listing_is_one_call(mount_factory, ceph_cluster, how):  # noqa: F811
    """One call lists every image: rbd_lister.py (header objects, no image opened) or,
    without python3-rados, ``rbd ls -l``; never one ``rbd info`` per image."""
    env = dict(os.environ, STORAGEFS_RBD_LISTING=how)
    m, c = mount_factory(env=env), ceph_cluster
    for i in range(5):
        c.rbd("create", f"{POOL}/many{i}", "--size", "1M")
    p = define_rbd(m, "r4", c)
    before = m.log().count("rbd_lister.py") + m.log().count(" ls -l ")
    opens = m.log().count(" info ")
    command(p / "control", "refresh")
    assert m.log().count("rbd_lister.py") + m.log().count(" ls -l ") == before + 1
    assert m.log().count(" info ") == opens  # no image opened one by one
    assert {f"many{i}" for i in range(5)} <= set(os.listdir(p / "volumes"))
    assert ("rbd_lister.py" in m.log()) == (how == "lister")
    c.rbd("snap", "create", f"{POOL}/many0@snap")
    command(p / "control", "refresh")
    assert os.listdir(p / "volumes" / "many0" / "snapshots") == ["snap"]
    os.rmdir(p / "volumes" / "many0" / "snapshots" / "snap")
    for i in range(5):
        os.rmdir(p / "volumes" / f"many{i}")


# ---- cephx ----------------------------------------------------------------------------------
def ceph_secret(m, key: str) -> None:
    s = m.mnt / "secrets" / SECRET
    os.mkdir(s)
    write(s / "config.xml", f"<secret ephemeral='no' private='yes'>\n  <uuid>{SECRET}</uuid>\n"
                            "  <usage type='ceph'>\n    <name>client.storagefs</name>\n"
                            "  </usage>\n</secret>\n")
    write(s / "value", key + "\n")


AUTH = f"    <auth username='storagefs' type='ceph'>\n      <secret uuid='{SECRET}'/>\n" \
       "    </auth>\n"


def test_cephx_key_from_secrets(mounted, ceph_cephx):  # noqa: F811
    m, c = mounted, ceph_cephx
    ceph_secret(m, c.client_key)
    p = define_rbd(m, "cx", c, auth=AUTH)
    assert read(p / "state") == "running\n"
    command(p / "control", "create keyed 4M")
    assert "keyed" in set(c.rbd("ls", "-p", POOL, "--id", "admin").stdout.split())
    os.rmdir(p / "volumes" / "keyed")
    # the key is in secrets/ and nowhere else: not in the log, not left in a keyring
    assert c.client_key not in m.log()
    for f in m.state_dir.rglob("*"):
        if f.is_file() and f.name != f"{SECRET}.value":
            assert c.client_key.encode() not in f.read_bytes(), f


def test_cephx_wrong_key_is_eacces(mounted, ceph_cephx):  # noqa: F811
    m, c = mounted, ceph_cephx
    ceph_secret(m, "AQBhSWZnAAAAABAAm1ZxQk8hUuYmJ6n3GJtJCw==")  # a key, not theirs
    p = define_rbd(m, "cxbad", c, auth=AUTH, start=False)
    code, _ = write_errno(p / "control", "start\n")
    assert code == errno.EACCES
    line = assert_one_error_line(p)
    assert "ermission denied" in line or "authenticat" in line.lower()
    assert read(p / "state") == "inactive\n"


# ---- the cluster stops answering (last: it pauses the session's OSD) -------------------------
@pytest.mark.log_allows("storage became inaccessible", "rbd_lister.py failed",
                        "figures not refreshed", "returned after", "refused control")
def test_cluster_that_stops_answering(mount_factory, ceph_cluster, tmp_path):  # noqa: F811
    c = ceph_cluster
    env = dict(os.environ, STORAGEFS_TOOL_TIMEOUT="4")
    m = mount_factory(env=env)
    p = define_rbd(m, "gone", c)
    d = define_pool(m, "local", tmp_path / "local")
    command(p / "control", "create stays 4M")
    c.pause("osd.0")
    try:
        # the first to notice is a volume operation: killed at its time limit, the
        # pool turns inaccessible, its last known images stay listed
        code, _ = write_errno(p / "control", "create newone 4M\n")
        assert code in (errno.EIO, errno.ETIMEDOUT), code
        assert read(p / "state") == "inaccessible\n"
        assert "stays" in os.listdir(p / "volumes")
        t0 = time.monotonic()
        code, _ = write_errno(p / "control", "refresh\n")
        took = time.monotonic() - t0
        assert code in (errno.EIO, errno.ETIMEDOUT), code
        assert took < 15, took
        assert read(p / "state") == "inaccessible\n"
        line = read(p / "error").strip()
        assert line and not line.endswith(":"), line  # a reason, not an empty one
        assert "stays" in os.listdir(p / "volumes")
        # every other pool answers at once meanwhile
        t0 = time.monotonic()
        os.listdir(d / "volumes")
        read(d / "status.xml")
        assert time.monotonic() - t0 < 0.1
    finally:
        c.resume("osd.0")
    assert wait_for(lambda: c.rbd("ls", "-p", POOL, check=False).returncode == 0, 30)
    command(p / "control", "refresh")
    assert read(p / "state") == "running\n"
    assert "stays" in os.listdir(p / "volumes")
    os.rmdir(p / "volumes" / "stays")


# ---- issue 13 (rbd): delete with snapshots, allocation, linked clones, across pools -------
def test_delete_purges_snapshots_only_when_asked(mounted, ceph_cluster):  # noqa: F811
    m, c = mounted, ceph_cluster
    p = define_rbd(m, "rp", c)
    vols = p / "volumes"
    command(p / "control", "create snapped 4M")
    os.mkdir(vols / "snapped" / "snapshots" / "s1")
    os.mkdir(vols / "snapped" / "snapshots" / "s2")
    # rmdir: refused with Ceph's reason, which names the way out
    with pytest.raises(OSError) as exc:
        os.rmdir(vols / "snapped")
    assert exc.value.errno == errno.ENOTEMPTY
    assert "--purge-snapshots" in assert_one_error_line(vols / "snapped")
    # a protected snapshot refuses the purge, with the reason; nothing changed
    c.rbd("snap", "protect", f"{POOL}/snapped@s2")
    code, _ = write_errno(vols / "snapped" / "control", "delete --purge-snapshots\n")
    assert code == errno.EBUSY
    assert "s2 is protected" in assert_one_error_line(vols / "snapped")
    assert {s["name"] for s in c.rbd_json("snap", "ls", f"{POOL}/snapped")} == {"s1", "s2"}
    assert "snapped" in os.listdir(vols)
    # unprotected by the user: the purge removes the snapshots and the image
    c.rbd("snap", "unprotect", f"{POOL}/snapped@s2")
    command(vols / "snapped" / "control", "delete --purge-snapshots")
    assert "snapped" not in images(c)
    assert "snapped" not in os.listdir(vols)
    # bad input: EINVAL, changes nothing
    command(p / "control", "create other 4M")
    code, _ = write_errno(vols / "other" / "control", "delete --all\n")
    assert code == errno.EINVAL
    assert "other" in images(c)
    command(vols / "other" / "control", "delete")
    assert "other" not in images(c)


def test_allocation_from_rbd_du_where_fast_diff(mounted, ceph_cluster):  # noqa: F811
    m, c = mounted, ceph_cluster
    p = define_rbd(m, "ra", c)
    vols = p / "volumes"
    command(p / "control", "create fast 64M")  # Ceph's default features: fast-diff
    assert "fast-diff" in c.rbd_json("info", f"{POOL}/fast")["features"]
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 8M", f"rbd:{POOL}/fast:conf={c.conf}"])
    os.listdir(vols)  # someone reads the pool: its figures refresh in the background
    assert wait_for(lambda: read(vols / "fast" / "allocation") == f"{8 * MiB}\n", 15), \
        read(vols / "fast" / "allocation")
    alloc = xml_value(read(vols / "fast" / "status.xml"), "/volume/allocation")
    assert int(alloc) == 8 * MiB
    assert " du -p rbdtest " in m.log()  # one call for the pool
    # reads never call rbd du
    calls = m.log().count(" du ")
    for _ in range(20):
        read(vols / "fast" / "allocation")
    assert m.log().count(" du ") - calls <= 1  # at most one by the background task
    # an image without fast-diff: the capacity, as libvirt's allocation='capacity'
    c.rbd("create", f"{POOL}/slow", "--size", "16M", "--image-feature", "layering")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 0 1M", f"rbd:{POOL}/slow:conf={c.conf}"])
    assert wait_for(lambda: "slow" in os.listdir(vols), 5)
    time.sleep(6)  # one more du (of the fast-diff images only)
    assert read(vols / "slow" / "allocation") == f"{16 * MiB}\n"
    assert read(vols / "fast" / "allocation") == f"{8 * MiB}\n"
    assert f" du {POOL}/slow" not in m.log()
    os.rmdir(vols / "slow")
    os.rmdir(vols / "fast")


def test_linked_clone_is_snapshot_protect_clone(mounted, ceph_cluster, tmp_path):  # noqa: F811
    m, c = mounted, ceph_cluster
    p = define_rbd(m, "rl", c)
    vols = p / "volumes"
    command(p / "control", "create gold 16M")
    url = f"rbd:{POOL}/gold:conf={c.conf}"
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 1M", url])
    command(vols / "gold" / "control", "clone vm1 --linked")
    # a copy-on-write child of gold@clone-vm1, which is protected
    parent = c.rbd_json("info", f"{POOL}/vm1")["parent"]
    assert (parent["image"], parent["snapshot"]) == ("gold", "clone-vm1")
    snaps = {s["name"]: s for s in c.rbd_json("snap", "ls", f"{POOL}/gold")}
    assert snaps["clone-vm1"]["protected"] == "true"
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 1M", f"rbd:{POOL}/vm1:conf={c.conf}"])
    assert "vm1" in os.listdir(vols)
    assert not [n for n in images(c) if n.startswith(".")]
    assert wait_for(lambda: "clone-vm1" in os.listdir(vols / "gold" / "snapshots"), 5)
    # a plain clone stays a deep copy: no parent
    command(vols / "gold" / "control", "clone deep")
    assert "parent" not in c.rbd_json("info", f"{POOL}/deep")
    # the source cannot go while its clone needs the protected snapshot: the reason
    code, _ = write_errno(vols / "gold" / "control", "delete --purge-snapshots\n")
    assert code == errno.EBUSY
    assert "clone-vm1 is protected" in assert_one_error_line(vols / "gold")
    # --linked into another pool: refused, nothing made
    define_pool(m, "files", tmp_path / "files")
    code, _ = write_errno(vols / "gold" / "control", "clone x --linked --pool files\n")
    assert code in (errno.ENOTSUP, errno.EOPNOTSUPP)
    assert "own pool" in assert_one_error_line(vols / "gold")
    assert not os.listdir(tmp_path / "files")
    os.rmdir(vols / "vm1")
    os.rmdir(vols / "deep")
    c.rbd("snap", "unprotect", f"{POOL}/gold@clone-vm1")
    command(vols / "gold" / "control", "delete --purge-snapshots")
    assert not {"gold", "vm1", "deep"} & images(c)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_clone_from_rbd_into_a_dir_pool(mounted, ceph_cephx, tmp_path, fmt):  # noqa: F811
    """rbd -> dir: qemu-img convert -n from an rbd: URL, the cephx key in a keyring file
    that exists only while it runs (never on a command line)."""
    m, c = mounted, ceph_cephx
    ceph_secret(m, c.client_key)
    r = define_rbd(m, "rx", c, auth=AUTH)
    d = define_pool(m, "files", tmp_path / "files")
    command(r / "control", "create out 8M")
    url = f"rbd:{POOL}/out:conf={c.conf}:id=admin"
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x6e 1M 64k", url])
    name = f"copy.{fmt}"
    command(r / "volumes" / "out" / "control", f"clone {name} --pool files --format {fmt}")
    img = tmp_path / "files" / name
    assert name in os.listdir(d / "volumes")
    assert read(d / "volumes" / name / "format") == f"{fmt}\n"
    assert read(d / "volumes" / name / "capacity") == f"{8 * MiB}\n"
    run(["qemu-io", "-f", fmt, "-c", "read -P 0x6e 1M 64k", "-c", "read -P 0 0 1M", str(img)])
    assert oct(img.stat().st_mode & 0o777) == "0o600"
    assert " convert -p -n " in m.log() and "rbd:" in m.log()
    assert c.client_key not in m.log()
    assert not list(tmp_path.glob("files/.*"))  # no temporary left
    # and back: dir -> rbd through qemu-img convert -n onto an rbd: URL, keyed by file
    command(d / "volumes" / name / "control", f"clone back{fmt} --pool rx --format raw")
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x6e 1M 64k",
         f"rbd:{POOL}/back{fmt}:conf={c.conf}:id=admin"])
    assert c.client_key not in m.log()
    os.rmdir(r / "volumes" / f"back{fmt}")
    os.rmdir(r / "volumes" / "out")
