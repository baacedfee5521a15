"""What an outside tester found with only the README (issue 11 follow-up), each on a
real mount, driven as users do:

1. a running dir or fs pool whose target (or a directory above it) is swapped for a
   symlink never follows it: refused, nothing made or removed there, the pool
   inaccessible with the reason;
2. wipe zero of a qcow2 keeps its encryption, compat, lazy refcounts, cluster size and
   preallocation;
3. backing-chain loops and self-references: ELOOP at once, and shown at listing;
4. snapshots of an encrypted qcow2 get its secret;
5. an allocation above the capacity only within qemu's rounding;
6. a background mount that fails after forking says why;
7. an interrupted wipe says what it left;
8. refusals and error lines: mkdir of an existing snapshot, pending disk volumes,
   read refusals (log only: tar of the tree sees no file change);
9. chmod/chown of command files never grants write to anyone but root.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopdev import LoopSet, findmnt, skip_reason
from mount_helpers import (
    MiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    qemu_info,
    read,
    run,
    run_mount_expect_refusal,
    storagefs_cmd,
    write,
    write_errno,
)
from test_other_users import as_user, other_user  # noqa: F401

from storagefs.backends.imagefmt import remake_options
from storagefs.errors import InvalidArgument, NotSupported
from storagefs.parsing import ALLOCATION_SLACK, check_allocation


def state(pdir: Path) -> str:
    return read(pdir / "state").strip()


def mkdir_errno(path: Path) -> int | None:
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    return None


def rmdir_errno(path: Path) -> int | None:
    try:
        os.rmdir(path)
    except OSError as exc:
        return exc.errno
    return None


# ---- 1. a replaced target is never followed ----------------------------------------


@pytest.mark.log_allows("storage became inaccessible")
@pytest.mark.parametrize("swap", ["target", "parent"])
def test_dir_pool_never_follows_a_target_swapped_for_a_symlink(mounted, tmp_path, swap):
    real = tmp_path / "real" / "pool"
    other = tmp_path / "other" / "pool"
    real.mkdir(parents=True)
    other.mkdir(parents=True)
    p = define_pool(mounted, "p1", real, build=False)
    os.mkdir(p / "volumes" / "a.raw")
    (other / "victim.raw").write_bytes(b"not storagefs's")
    # the victim is found by name if the pool followed the link: it must survive
    (real / "victim.raw").write_bytes(b"")
    command(p / "control", "refresh")
    assert ls_names(p / "volumes") == {"a.raw", "victim.raw"}

    if swap == "target":
        real.rename(tmp_path / "real" / "pool.moved")
        real.symlink_to(other)
    else:
        (tmp_path / "real").rename(tmp_path / "real.moved")
        (tmp_path / "real").symlink_to(tmp_path / "other")

    # rmdir of a volume whose name is also in the other directory: refused
    assert rmdir_errno(p / "volumes" / "victim.raw") == errno.EIO
    line = assert_one_error_line(p)
    assert "was replaced" in line and str(real) in line, line
    assert state(p) == "inaccessible"
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"
    assert mkdir_errno(p / "volumes" / "b.raw") == errno.EIO
    assert "was replaced" in assert_one_error_line(p)
    assert os.listdir(other) == ["victim.raw"]
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"
    assert ls_names(p / "volumes") == set()
    # a refresh finds it still replaced; moved back, the pool runs again
    code, _ = write_errno(p / "control", "refresh\n")
    assert code == errno.EIO and state(p) == "inaccessible"
    if swap == "target":
        real.unlink()
        (tmp_path / "real" / "pool.moved").rename(real)
    else:
        (tmp_path / "real").unlink()
        (tmp_path / "real.moved").rename(tmp_path / "real")
    command(p / "control", "refresh")
    assert state(p) == "running"
    assert ls_names(p / "volumes") == {"a.raw", "victim.raw"}
    os.rmdir(p / "volumes" / "victim.raw")
    assert not (real / "victim.raw").exists()
    assert (other / "victim.raw").read_bytes() == b"not storagefs's"


@pytest.mark.log_allows("storage became inaccessible", "cannot watch")
def test_dir_pool_swapped_target_is_noticed_without_an_operation(mounted, tmp_path):
    """The figures refreshed in the background find it too (within a few seconds)."""
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    p = define_pool(mounted, "p1", real, build=False)
    real.rename(tmp_path / "moved")
    real.symlink_to(other)
    deadline = time.monotonic() + 10
    while state(p) != "inaccessible" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(p) == "inaccessible"
    assert "was replaced" in read(p / "error")
    # stop and start: the pool takes what the target is now, knowingly
    command(p / "state", "inactive")
    command(p / "state", "running")
    os.mkdir(p / "volumes" / "new.raw")
    assert os.listdir(other) == ["new.raw"]


@pytest.mark.log_allows("storage became inaccessible")
def test_fs_pool_never_follows_a_mount_point_moved_away(mounted, tmp_path):
    reason = skip_reason("mkfs.ext4", "mount", "umount", "findmnt")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")
        run(["mkfs.ext4", "-q", "-F", dev.path])
        base, other = tmp_path / "base", tmp_path / "other"
        (base / "fsmnt").mkdir(parents=True)
        (other / "fsmnt").mkdir(parents=True)
        p = mounted.pool("fsp")
        os.mkdir(p)
        write(p / "config.xml", f"<pool type='fs'>\n  <name>fsp</name>\n  <source>\n"
              f"    <device path='{dev.path}'/>\n    <format type='ext4'/>\n  </source>\n"
              f"  <target>\n    <path>{base / 'fsmnt'}</path>\n  </target>\n</pool>\n")
        command(p / "state", "running")
        os.mkdir(p / "volumes" / "v1")
        # the directory above the mount point is renamed (the mount goes with it) and a
        # symlink to another directory takes its name
        base.rename(tmp_path / "base.moved")
        base.symlink_to(other)
        assert mkdir_errno(p / "volumes" / "v2") == errno.ENOENT
        assert "not mounted" in assert_one_error_line(p)
        assert state(p) == "inaccessible"
        assert os.listdir(other / "fsmnt") == []
        assert findmnt(tmp_path / "base.moved" / "fsmnt")["SOURCE"] == dev.path
        # stop leaves the moved mount alone (it is not where the pool mounted it)
        command(p / "state", "inactive")
        assert findmnt(tmp_path / "base.moved" / "fsmnt")["SOURCE"] == dev.path
        run(["umount", tmp_path / "base.moved" / "fsmnt"])


# ---- 2. wipe zero keeps what the image was made with; 4. snapshots of LUKS qcow2 -------

SECRET = "8a3e1b6e-0c1e-4d55-9d3b-6d2a3c4b5e6f"
PASSPHRASE = "correct-horse-battery-staple-4242"


def make_secret(m) -> None:
    s = m.mnt / "secrets" / SECRET
    os.mkdir(s)
    write(s / "config.xml",
          f"<secret ephemeral='no' private='yes'>\n  <uuid>{SECRET}</uuid>\n"
          "  <usage type='volume'>\n    <volume>/x/enc</volume>\n  </usage>\n</secret>\n")
    write(s / "value", PASSPHRASE + "\n")


def qcow2_doc(name: str, capacity: int, extra: str, allocation: int | None = None) -> str:
    alloc = f"  <allocation unit='bytes'>{allocation}</allocation>\n" if allocation else ""
    return (f"<volume type='file'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n{alloc}"
            f"  <target>\n    <format type='qcow2'/>\n{extra}  </target>\n</volume>\n")


ENCRYPTION = (f"    <encryption format='luks'>\n"
              f"      <secret type='passphrase' uuid='{SECRET}'/>\n    </encryption>\n")


def qemu_io(tmp_path: Path, image: Path, cmd: str, secret: str = PASSPHRASE,
            check: bool = True) -> subprocess.CompletedProcess:
    pw = tmp_path / "pw"
    pw.write_text(secret)
    try:
        return run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts",
                    f"driver=qcow2,file.filename={image},encrypt.key-secret=s", "-c", cmd],
                   check=check)
    finally:
        pw.unlink()


def specific(info: dict) -> dict:
    return info["format-specific"]["data"]


def test_wipe_zero_of_an_encrypted_qcow2_keeps_encryption_and_options(mounted, tmp_path):
    make_secret(mounted)
    v = mounted.vol("enc.qcow2")
    os.mkdir(v)
    write(v / "config.xml", qcow2_doc(
        "enc.qcow2", 32 * MiB, "    <compat>1.1</compat>\n"
        "    <clusterSize unit='KiB'>128</clusterSize>\n"
        "    <features>\n      <lazy_refcounts/>\n    </features>\n" + ENCRYPTION))
    image = Path(os.readlink(v / "path"))
    before = qemu_info(image)
    assert before["encrypted"] and before["cluster-size"] == 128 * 1024
    qemu_io(tmp_path, image, "write -P 0x5a 0 256k")
    # a guest wrote to it: from now on its document may not re-make it
    command(v / "control", "wipe zero")
    after = qemu_info(image)
    assert after["encrypted"] is True
    assert after["cluster-size"] == 128 * 1024
    assert specific(after)["compat"] == "1.1"
    assert specific(after)["lazy-refcounts"] is True
    for key in ("format", "cipher-alg", "cipher-mode", "ivgen-alg", "hash-alg"):
        assert specific(after)["encrypt"][key] == specific(before)["encrypt"][key], key
    assert after["virtual-size"] == 32 * MiB
    # the same secret opens it, and what the guest wrote is gone
    assert "read 262144/262144" in qemu_io(tmp_path, image, "read -P 0 0 256k").stdout
    wrong = qemu_io(tmp_path, image, "read 0 4k", secret="not-the-passphrase", check=False)
    assert wrong.returncode != 0
    assert stat.S_IMODE(os.stat(image).st_mode) == 0o600
    assert "encryption" in read(v / "status.xml")


def test_wipe_zero_of_a_qcow2_keeps_compat_cluster_size_and_preallocation(mounted):
    v = mounted.vol("old.qcow2")
    os.mkdir(v)
    write(v / "config.xml", qcow2_doc(
        "old.qcow2", 16 * MiB, "    <compat>0.10</compat>\n"
        "    <clusterSize unit='KiB'>256</clusterSize>\n", allocation=16 * MiB))
    image = Path(os.readlink(v / "path"))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", image])
    command(v / "control", "wipe zero")
    info = qemu_info(image)
    assert specific(info)["compat"] == "0.10"
    assert info["cluster-size"] == 256 * 1024
    assert info["actual-size"] >= 16 * MiB  # preallocated again
    assert "read 1048576/1048576" in run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0 0 1M", image]).stdout


def test_wipe_of_an_encrypted_qcow2_without_its_secret_is_refused(mounted, tmp_path):
    """A file found in the pool (no document names its secret): refused, not
    re-made unencrypted."""
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    image = mounted.images / "found.qcow2"
    for _ in range(6):  # LUKS key setup times itself on the CPU: busy VMs fail it
        res = run(["qemu-img", "create", "-q", "-f", "qcow2", "--object",
                   f"secret,id=s,file={pw}", "-o", "encrypt.format=luks,encrypt.key-secret=s",
                   image, "16M"], check=False)
        if res.returncode == 0:
            break
    assert res.returncode == 0, res.stderr
    v = mounted.vol("found.qcow2")
    command(mounted.pool() / "control", "refresh")
    code, _ = write_errno(v / "control", "wipe zero\n")
    assert code == errno.ENOTSUP
    assert "secret" in assert_one_error_line(v)
    assert qemu_info(image)["encrypted"] is True


def test_snapshots_of_an_encrypted_qcow2(mounted, tmp_path):
    make_secret(mounted)
    v = mounted.vol("snap.qcow2")
    os.mkdir(v)
    write(v / "config.xml", qcow2_doc("snap.qcow2", 16 * MiB, ENCRYPTION))
    image = Path(os.readlink(v / "path"))
    qemu_io(tmp_path, image, "write -P 0x01 0 64k")
    os.mkdir(v / "snapshots" / "s1")  # snapshot create
    assert os.listdir(v / "snapshots") == ["s1"]
    qemu_io(tmp_path, image, "write -P 0x02 0 64k")
    command(v / "control", "revert s1")
    assert "read 65536/65536" in qemu_io(tmp_path, image, "read -P 0x01 0 64k").stdout
    os.rmdir(v / "snapshots" / "s1")  # snapshot delete
    assert os.listdir(v / "snapshots") == []
    assert qemu_info(image)["encrypted"] is True
    assert read(v / "error") == ""


@settings(max_examples=300, deadline=None)
@given(compat=st.sampled_from(["0.10", "1.1"]), lazy=st.booleans(),
       cluster=st.sampled_from([512, 4096, 65536, 1 << 21]),
       bits=st.sampled_from([1, 8, 16, 64]), extended=st.booleans(),
       compression=st.sampled_from(["zlib", "zstd"]),
       cipher=st.one_of(st.none(), st.sampled_from(["aes-256", "aes-128", "twofish-256"]),
                        st.text(max_size=20)),
       size=st.integers(0, 1 << 40), used=st.integers(0, 1 << 41))
def test_remake_options_follow_qemu_img_info(compat, lazy, cluster, bits, extended,
                                             compression, cipher, size, used):
    """qemu-img info's JSON -> qemu-img create's -o options: what the image was made
    with comes back, and no value reaching -o can add an option of its own."""
    data = {"virtual-size": size, "actual-size": used, "cluster-size": cluster,
            "format-specific": {"type": "qcow2", "data": {
                "compat": compat, "lazy-refcounts": lazy, "refcount-bits": bits,
                "extended-l2": extended, "compression-type": compression}}}
    if cipher is not None:
        data["format-specific"]["data"]["encrypt"] = {
            "format": "luks", "cipher-alg": cipher, "cipher-mode": "xts",
            "ivgen-alg": "plain64", "hash-alg": "sha256", "slots": []}
    try:
        opts = remake_options("qcow2", data)
    except InvalidArgument:
        assert cipher is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cipher)
        return
    assert opts["compat"] == compat
    assert ("lazy_refcounts" in opts) == lazy and ("extended_l2" in opts) == extended
    assert opts.get("cluster_size", "65536") == str(cluster)
    assert opts.get("refcount_bits", "16") == str(bits)
    assert opts.get("compression_type", "zlib") == compression
    assert ("preallocation" in opts) == (size > 0 and used >= size)
    if cipher is None:
        assert not any(k.startswith("encrypt.") for k in opts)
    else:
        assert opts["encrypt.format"] == "luks" and opts["encrypt.key-secret"] == "sec0"
        assert opts["encrypt.cipher-alg"] == cipher
    for value in opts.values():
        assert "," not in value and "=" not in value


def test_remake_options_refuse_what_one_new_file_cannot_be():
    with pytest.raises(NotSupported):
        remake_options("qcow2", {"format-specific": {"data": {"data-file": "/x/data"}}})
    with pytest.raises(NotSupported):
        remake_options("vmdk", {"format-specific": {"data": {
            "create-type": "twoGbMaxExtentSparse"}}})
    luks = remake_options("luks", {"format-specific": {"data": {"cipher-alg": "aes-256"}}})
    assert luks == {"key-secret": "sec0", "cipher-alg": "aes-256"}


# ---- 3. backing-chain loops -----------------------------------------------------------


def qcow2_backed(path: Path, backing: str) -> None:
    """A qcow2 whose header names ``backing`` (rebase -u writes it without opening it)."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"])
    run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing, path])


@pytest.mark.parametrize("shape", ["self", "pair", "hardlink"])
def test_backing_chain_loops_are_refused_at_once_and_shown(mounted, shape):
    images = mounted.images
    a, b = images / "a.qcow2", images / "b.qcow2"
    if shape == "self":
        qcow2_backed(a, str(a))
    elif shape == "pair":
        qcow2_backed(b, str(a))
        qcow2_backed(a, str(b))
    else:  # b is a second name of a: a -> b is a -> a
        qcow2_backed(a, str(b))
        os.link(a, b)
    command(mounted.pool() / "control", "refresh")
    v = mounted.vol("a.qcow2")
    # the listing shows it: the volume's error file names the loop
    line = read(v / "error")
    assert "loop" in line or "refers to itself" in line, line
    assert "a.qcow2" in line
    for cmd in ("clone c.qcow2", "clone c.raw --format raw", "resize 32M", "wipe zero"):
        started = time.monotonic()
        code, _ = write_errno(v / "control", cmd + "\n")
        assert code == errno.ELOOP, (cmd, code)
        assert time.monotonic() - started < 10, cmd
        line = assert_one_error_line(v)
        assert "loop" in line or "refers to itself" in line, line
    assert not (images / "c.qcow2").exists() and not (images / "c.raw").exists()
    assert qemu_info(a)["virtual-size"] == 16 * MiB


def until(cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_loop_closed_by_a_file_that_comes_later_is_shown(mounted):
    """a.qcow2 names b.qcow2, which does not exist yet: a's chain is checked (nothing to
    follow). Then another program writes b.qcow2 naming a, closing the loop: with no
    refresh, the watcher shows the loop on both (a's chain was not looked at again)."""
    images = mounted.images
    a, b = images / "a.qcow2", images / "b.qcow2"
    qcow2_backed(a, str(b))
    va = mounted.vol("a.qcow2")
    assert until(lambda: "b.qcow2" in read(va / "status.xml"), 10), read(va / "status.xml")
    assert read(va / "error") == ""
    qcow2_backed(b, str(a))
    vb = mounted.vol("b.qcow2")
    assert until(vb.exists, 10)
    for v in (vb, va):
        assert until(lambda v=v: "loop" in read(v / "error"), 10), read(v / "error")
        line = read(v / "error")
        assert "a.qcow2" in line and "b.qcow2" in line
        code, _ = write_errno(v / "control", "clone c.qcow2\n")
        assert code == errno.ELOOP


def test_a_long_chain_without_a_loop_is_followed(mounted):
    """c -> b -> a (no loop): clone works and no error line appears."""
    images = mounted.images
    run(["qemu-img", "create", "-q", "-f", "qcow2", images / "a.qcow2", "16M"])
    qcow2_backed(images / "b.qcow2", str(images / "a.qcow2"))
    qcow2_backed(images / "c.qcow2", str(images / "b.qcow2"))
    command(mounted.pool() / "control", "refresh")
    v = mounted.vol("c.qcow2")
    command(v / "control", "clone d.qcow2")
    assert (images / "d.qcow2").exists()
    assert read(v / "error") == ""


# ---- 5. an allocation above the capacity ---------------------------------------------


def raw_doc(name: str, capacity: int, allocation: int) -> str:
    return (f"<volume type='file'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{allocation}</allocation>\n"
            "  <target>\n    <format type='raw'/>\n  </target>\n</volume>\n")


def test_allocation_above_capacity_only_as_a_full_allocation_rounds(mounted):
    v = mounted.vol("v.raw")
    os.mkdir(v)
    before = read(v / "config.xml")
    for allocation in (16 * MiB + 1000, 16 * MiB + 1, 18 * MiB):
        code, _ = write_errno(v / "config.xml", raw_doc("v.raw", 16 * MiB, allocation))
        assert code == errno.EINVAL, allocation
        line = assert_one_error_line(v)
        assert f"allocation {allocation} is above the capacity" in line, line
        assert read(v / "config.xml") == before
    code, _ = write_errno(mounted.pool() / "control", f"create w.raw 16M --allocation "
                          f"{16 * MiB + 1000}\n")
    assert code == errno.EINVAL and "w.raw" not in ls_names(mounted.pool() / "volumes")
    # what status.xml of a fully allocated volume may say: accepted, fully allocated
    write(v / "config.xml", raw_doc("v.raw", 16 * MiB, 16 * MiB + 4096))
    assert os.stat(mounted.images / "v.raw").st_blocks * 512 >= 16 * MiB
    assert read(v / "capacity").strip() == str(16 * MiB)


@given(capacity=st.integers(0, 1 << 50), over=st.integers(-(1 << 30), 1 << 30))
def test_check_allocation_accepts_only_the_rounding_of_a_full_allocation(capacity, over):
    allocation = max(0, capacity + over)
    try:
        check_allocation(capacity, allocation)
    except InvalidArgument as exc:
        assert allocation > capacity and str(allocation) in exc.reason
        assert allocation % 512 or allocation > capacity + ALLOCATION_SLACK + capacity // 256
    else:
        assert allocation <= capacity or (
            allocation % 512 == 0
            and allocation <= capacity + ALLOCATION_SLACK + capacity // 256)


# ---- 6. a background mount that fails after forking says why ------------------------


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_background_mount_failing_after_fork_prints_why(tmp_path, where):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    state_dir = blocker / "state" if where == "under-a-file" else blocker
    rc, err = run_mount_expect_refusal(
        [*storagefs_cmd(), "mount", "--state-dir", str(state_dir), str(mnt)], mnt)
    assert rc not in (None, 0), err
    assert f"cannot make the state directory {state_dir}" in err, err
    assert ("Not a directory" in err) if where == "under-a-file" else ("File exists" in err)
    assert "died before" not in err
    assert not os.path.ismount(mnt)


# ---- 7. an interrupted operation says what it left --------------------------------------


def interrupt_when(path: Path, line: str, started) -> tuple[int, str]:
    """Write ``line`` to ``path`` from bash; SIGINT it once started() is true. (exit
    status, stderr)."""
    proc = subprocess.Popen(["bash", "-c", f"printf '%s\\n' '{line}' > '{path}'"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the operation ended before it was interrupted"
        os.kill(proc.pid, 2)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_interrupted_wipe_says_the_volume_is_partly_wiped(mounted):
    v = mounted.vol("big.raw")
    os.mkdir(v)
    write(v / "config.xml", raw_doc("big.raw", 1 << 30, 0))
    rc, _ = interrupt_when(v / "control", "wipe random",
                           lambda: re.search(r"wipe [1-9]", read(v / "progress")))
    assert rc != 0
    line = assert_one_error_line(v)
    assert "interrupted by a signal" in line and "partly wiped" in line, line
    assert "undone" not in line.replace("cannot be undone", "")
    assert read(v / "progress") == ""
    # it was really stopped part way: some of it is random, the end is still a hole
    with open(mounted.images / "big.raw", "rb") as f:
        assert f.read(4096) != bytes(4096)
        f.seek((1 << 30) - 4096)
        assert f.read(4096) == bytes(4096)


def test_an_interrupted_clone_says_nothing_was_added(mounted):
    v = mounted.vol("src.raw")
    os.mkdir(v)
    write(v / "config.xml", raw_doc("src.raw", 1 << 30, 0))
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x7 0 256M", mounted.images / "src.raw"],
        timeout=300)
    rc, _ = interrupt_when(v / "control", "clone copy.qcow2 --format qcow2",
                           lambda: re.search(r"clone", read(v / "progress")))
    assert rc != 0
    line = assert_one_error_line(v)
    assert "interrupted by a signal" in line and "no volume was added" in line, line
    assert "copy.qcow2" not in ls_names(mounted.pool() / "volumes")
    assert not [n for n in os.listdir(mounted.images) if "copy" in n]


# ---- 8. refusals and their error lines --------------------------------------------------


@pytest.mark.parametrize("size", [200 * MiB, 63 * MiB, 64 * MiB - 512])
def test_pending_disk_volume_refused_with_enospc_shows_its_error_line(mounted, tmp_path,
                                                                      size):
    reason = skip_reason("parted", "wipefs")
    if reason:
        pytest.skip(reason)
    with LoopSet(tmp_path) as loops:
        dev = loops.make("64M")
        p = mounted.pool("dp")
        os.mkdir(p)
        write(p / "config.xml", f"<pool type='disk'>\n  <name>dp</name>\n  <source>\n"
              f"    <device path='{dev.path}'/>\n    <format type='gpt'/>\n  </source>\n"
              "  <target>\n    <path>/dev</path>\n  </target>\n</pool>\n")
        command(p / "control", "build")
        command(p / "state", "running")
        name = f"{dev.name}p1"
        v = p / "volumes" / name
        os.mkdir(v)
        # what a user does first: look for an error file (there is none yet)
        assert not os.path.exists(v / "error")
        res = run(["cat", v / "error"], check=False)
        assert res.returncode != 0
        doc = (f"<volume type='block'>\n  <name>{name}</name>\n"
               f"  <capacity unit='bytes'>{size}</capacity>\n</volume>\n")
        res = run(["bash", "-c", f"cat > '{v / 'config.xml'}'"], input=doc, text=True,
                  check=False)
        assert res.returncode != 0 and "No space left" in res.stderr, res.stderr
        # the refusal is on record where the user looks, at once
        assert run(["cat", v / "error"]).stdout.count("\n") == 1
        assert "free" in read(v / "error") or str(size) in read(v / "error")
        assert "error" in run(["ls", v]).stdout.split()
        command(p / "state", "inactive")


def test_mkdir_of_an_existing_snapshot_is_eexist_from_the_kernel(mounted):
    """The kernel answers EEXIST from its own lookup, without asking storagefs: no error
    line (docs/tree.md says so)."""
    v = mounted.vol("s.qcow2")
    os.mkdir(v)
    os.mkdir(v / "snapshots" / "s1")
    assert mkdir_errno(v / "snapshots" / "s1") == errno.EEXIST
    assert read(v / "error") == ""
    # the command spelling reaches storagefs, and is on record
    code, _ = write_errno(v / "control", "snapshot s1\n")
    assert code == errno.EEXIST
    assert "already exists" in assert_one_error_line(v)


def test_read_refusals_are_logged_only_and_tar_sees_no_change(mounted, tmp_path):
    uid = "5b2a0c1e-7d3f-4e55-9a3b-1c2d3e4f5a6b"
    s = mounted.mnt / "secrets" / uid
    os.mkdir(s)
    write(s / "config.xml", f"<secret ephemeral='no' private='yes'>\n  <uuid>{uid}</uuid>\n"
          "  <usage type='volume'>\n    <volume>/x/y</volume>\n  </usage>\n</secret>\n")
    write(s / "value", "a-passphrase\n")
    error_before = read(s / "error")
    mtime_before = os.stat(s / "error").st_mtime_ns
    for _ in range(2):
        res = run(["cat", s / "value"], check=False)
        assert res.returncode != 0 and "Permission denied" in res.stderr
    assert read(s / "error") == error_before
    assert os.stat(s / "error").st_mtime_ns == mtime_before
    assert "the value of a private secret cannot be read" in mounted.log()
    res = run(["tar", "-cf", str(tmp_path / "t.tar"), "-C", str(mounted.mnt), "secrets"],
              check=False)
    assert "file changed as we read it" not in res.stderr, res.stderr
    assert "value: Cannot open: Permission denied" in res.stderr
    assert read(s / "error") == error_before
    # a refused change is on record as ever
    code, _ = write_errno(s / "config.xml", "<secret><uuid>not-a-uuid</uuid></secret>\n")
    assert code == errno.EINVAL
    assert_one_error_line(s)


# ---- 9. chmod/chown of command files ---------------------------------------------------


def chmod_errno(path: Path, mode: int) -> int | None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        return exc.errno
    return None


def chown_errno(path: Path, uid: int, gid: int) -> int | None:
    try:
        os.chown(path, uid, gid)
    except OSError as exc:
        return exc.errno
    return None


def test_command_files_never_become_writable_by_others(mount_factory, other_user):  # noqa: F811
    m = mount_factory(extra=("--allow-other",))
    uid = "0c5b2a1e-7d3f-4e55-9a3b-1c2d3e4f5a6c"
    s = m.mnt / "secrets" / uid
    os.mkdir(s)
    write(s / "config.xml", f"<secret ephemeral='no' private='no'>\n  <uuid>{uid}</uuid>\n"
          "  <usage type='volume'>\n    <volume>/x/z</volume>\n  </usage>\n</secret>\n")
    write(s / "value", "a-passphrase\n")
    pool, vol = m.pool(), m.vol("v.raw")
    os.mkdir(vol)
    files = [(pool / "control", pool), (pool / "state", pool), (pool / "autostart", pool),
             (vol / "control", vol), (s / "value", s)]
    for path, owner in files:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        for bad in (0o666, 0o646, 0o624, mode | 0o002):
            assert chmod_errno(path, bad) == errno.EPERM, (path, oct(bad))
            assert "would let others" in assert_one_error_line(owner)
        assert chown_errno(path, other_user.uid, -1) == errno.EPERM, path
        assert "would let others" in assert_one_error_line(owner)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert os.stat(path).st_uid == 0
    # a secret's value is not made readable to others either
    assert chmod_errno(s / "value", 0o644) == errno.EPERM
    assert "read by root only" in assert_one_error_line(s)
    # taking bits away is fine
    os.chmod(pool / "control", 0o600)
    assert stat.S_IMODE(os.stat(pool / "control").st_mode) == 0o600
    # the other user still cannot write any of them
    got = as_user(other_user, m.mnt, {
        str(path): (lambda p=path: os.close(os.open(p, os.O_WRONLY))) for path, _ in files})
    assert {v[1] for v in got.values()} <= {"EACCES", "EPERM"}, got
    # config.xml modes and owners still round-trip (Puppet and Ansible set them)
    os.chmod(pool / "config.xml", 0o640)
    os.chown(pool / "config.xml", 0, other_user.gid)
    st_ = os.stat(pool / "config.xml")
    assert stat.S_IMODE(st_.st_mode) == 0o640 and st_.st_gid == other_user.gid
    # but a definition never becomes writable by others: it is applied with root's rights
    for path, owner in ((pool / "config.xml", pool), (vol / "config.xml", vol),
                        (s / "config.xml", s)):
        for bad in (0o666, 0o664, 0o646):
            assert chmod_errno(path, bad) == errno.EPERM, (path, oct(bad))
            assert "would let others change it" in assert_one_error_line(owner)
        assert chown_errno(path, other_user.uid, -1) == errno.EPERM, path
        assert os.stat(path).st_uid == 0
    got = as_user(other_user, m.mnt, {
        "config.xml": lambda: os.close(os.open(pool / "config.xml", os.O_WRONLY))})
    assert got["config.xml"][1] in ("EACCES", "EPERM"), got
