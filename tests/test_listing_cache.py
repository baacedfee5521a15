"""readdir of pools/ and volumes/ reuses what it sent the kernel while nothing it is made
of changed (issue 11: `ls -l` of 100,000 volumes). These tests change each thing a
listing is made of, between two `ls -l` of the same directory, and check that the
second one shows the change: names made and removed through the tree and outside it,
a volume's own change (its directory's time), times set by touch, and the kernel
forgetting the inodes it was given (drop_caches)."""

from __future__ import annotations

import os
import subprocess
import time

from mount_helpers import command, define_pool, read, run

N = 40


def listing(d) -> dict[str, tuple[int, str]]:
    """name -> (inode, mtime) as `ls -li` prints them, and nothing on stderr."""
    res = run(["ls", "-li", "--time-style=+%s.%N", str(d)])
    assert res.stderr == ""
    out = {}
    for line in res.stdout.splitlines()[1:]:
        f = line.split()
        out[f[-1]] = (int(f[0]), f[-2])
    return out


def many(m) -> None:
    for i in range(N):
        (m.images / f"v{i:02d}.raw").write_bytes(b"")
    command(m.pool() / "control", "refresh")


def test_names_made_and_removed_show_at_the_next_ls(mounted):
    many(mounted)
    vols = mounted.pool() / "volumes"
    first = listing(vols)
    assert len(first) == N
    assert listing(vols) == first  # the reused listing is the same listing

    os.mkdir(vols / "new.raw")
    after = listing(vols)
    assert set(after) == set(first) | {"new.raw"}
    os.rmdir(vols / "v03.raw")
    assert "v03.raw" not in listing(vols)

    (mounted.images / "v05.raw").unlink()
    (mounted.images / "outside.raw").write_bytes(b"")
    command(mounted.pool() / "control", "refresh")
    now = listing(vols)
    assert "v05.raw" not in now and "outside.raw" in now
    assert set(now) == (set(first) - {"v03.raw", "v05.raw"}) | {"new.raw", "outside.raw"}


def mtime(path) -> str:
    return run(["stat", "-c", "%.9Y", str(path)]).stdout.strip()


def test_times_follow_names_and_bytes_as_on_any_filesystem(mounted):
    """A directory's mtime moves when its names do (mkdir, rmdir), not when a volume in
    it changes (tar of the tree: "file changed as we read it"); a file's mtime moves with
    its own bytes; touch of a directory shows until its names change again."""
    many(mounted)
    vols = mounted.pool() / "volumes"
    before = listing(vols)
    d0, cap0, fmt0 = mtime(vols), mtime(vols / "v07.raw" / "capacity"), \
        mtime(vols / "v07.raw" / "format")
    command(vols / "v07.raw" / "control", "resize 1M")
    assert listing(vols) == before  # the volume's directory is as it was
    assert mtime(vols) == d0
    assert mtime(vols / "v07.raw" / "capacity") != cap0  # its bytes changed
    assert mtime(vols / "v07.raw" / "format") == fmt0  # its bytes did not

    run(["touch", "-m", "-d", "@1000000000", str(vols / "v09.raw")])
    assert listing(vols)["v09.raw"][1] == "1000000000.000000000"
    run(["touch", "-m", "-d", "@1000000000", str(vols)])
    assert mtime(vols) == "1000000000.000000000"
    os.mkdir(vols / "after-touch.raw")
    assert float(mtime(vols)) > 1000000000 + 1


def test_tar_of_a_pool_whose_figures_move_reads_no_changing_directory(mounted):
    """A guest writing into its volume moves the volume's allocation and the pool's
    figures: the directories tar reads meanwhile keep their times."""
    many(mounted)
    pool = mounted.pool()
    disk = mounted.images / "v00.raw"
    guest = subprocess.Popen(["bash", "-c", "for i in $(seq 25); do dd if=/dev/urandom "
                              f"of={disk} bs=1M count=1 seek=$i conv=notrunc,fsync "
                              "status=none; sleep 0.2; done"])
    allocations = set()
    try:
        while guest.poll() is None:  # tar again and again while the figures move
            out = run(["tar", "-cf", "/dev/null", str(pool / "volumes")], check=False)
            assert "changed as we read it" not in out.stderr, out.stderr
            assert out.returncode == 0, out.stderr
            allocations.add(read(pool / "volumes" / "v00.raw" / "allocation"))
    finally:
        guest.wait(60)
    assert len(allocations) > 2  # the figures did move meanwhile


def test_pools_listing_follows_define_and_undefine(mounted, tmp_path):
    pools = mounted.mnt / "pools"
    before = listing(pools)
    os.mkdir(pools / "extra")
    assert "extra" in listing(pools)
    os.rmdir(pools / "extra")
    assert set(listing(pools)) == set(before)


def test_listing_after_the_kernel_forgot_its_inodes(mounted):
    """Inodes the kernel forgets are dropped from the table: a listing reused after
    that would hand the kernel inode numbers storagefs no longer knows (ENOENT/ESTALE
    on the next stat). drop_caches makes the kernel forget every unused inode."""
    many(mounted)
    vols = mounted.pool() / "volumes"
    first = listing(vols)
    held = os.open(vols, os.O_RDONLY)  # volumes/ stays known: only its entries go
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        time.sleep(0.5)  # the kernel sends its FORGETs in the background
        again = listing(vols)
    finally:
        os.close(held)
    assert set(again) == set(first)
    for name in again:
        st = os.stat(vols / name)  # every inode the listing gave is one storagefs knows
        assert st.st_ino == again[name][0]
        assert os.listdir(vols / name)


def test_rewinddir_shows_the_directory_as_it_is_now(mounted):
    """POSIX: rewinddir makes the stream refer to the directory's current state. libc's
    opendir/readdir/rewinddir, as a C program (or Perl's rewinddir) calls them."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_ulong), ("d_off", ctypes.c_long),
                    ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                    ("d_name", ctypes.c_char * 256)]

    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.POINTER(Dirent)
    libc.readdir.argtypes = libc.rewinddir.argtypes = libc.closedir.argtypes = \
        [ctypes.c_void_p]
    many(mounted)
    vols = mounted.pool() / "volumes"

    def names(d) -> set[str]:
        out = set()
        while True:
            ent = libc.readdir(d)
            if not ent:
                return out
            out.add(ent.contents.d_name.decode())

    d = libc.opendir(str(vols).encode())
    assert d
    try:
        assert libc.readdir(d)  # the stream has begun
        os.mkdir(vols / "new.raw")
        os.rmdir(vols / "v01.raw")
        libc.rewinddir(d)
        seen = names(d)
    finally:
        libc.closedir(d)
    assert "new.raw" in seen and "v01.raw" not in seen


def test_pools_and_secrets_directories_move_with_their_names(mounted, tmp_path):
    """pools/ and secrets/ keep their mtime while nothing comes or goes (a pool's start
    or a change inside a pool is not a change of pools/), and it moves when a pool or
    secret is defined or undefined."""
    m = mounted
    pools, secrets = m.mnt / "pools", m.mnt / "secrets"
    p0, s0 = mtime(pools), mtime(secrets)
    time.sleep(0.05)
    command(m.pool("default") / "control", "refresh")
    os.mkdir(m.vol("inside.raw"))
    assert (mtime(pools), mtime(secrets)) == (p0, s0)
    define_pool(m, "extra", tmp_path / "extra")
    p1 = mtime(pools)
    assert float(p1) > float(p0)
    time.sleep(0.05)
    command(m.pool("extra") / "control", "stop")
    assert mtime(pools) == p1
    os.rmdir(m.pool("extra"))
    assert float(mtime(pools)) > float(p1)
    uuid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    os.mkdir(secrets / uuid)
    s1 = mtime(secrets)
    assert float(s1) > float(s0)
    time.sleep(0.05)
    os.rmdir(secrets / uuid)
    assert float(mtime(secrets)) > float(s1)


def _forget_all() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(0.5)  # the kernel sends its FORGETs in the background


def test_inode_numbers_outlive_the_kernel_forgetting_them(mounted, tmp_path):
    """A path keeps its inode number while its object lives, also after the kernel
    forgot it (find -inum, tar --listed-incremental, rsync -H compare numbers); a new
    volume of the same name gets new numbers."""
    m = mounted
    many(m)
    vols = m.pool() / "volumes"
    paths = [m.mnt / "pools", m.pool(), m.pool() / "config.xml", vols, vols / "v03.raw",
             vols / "v03.raw" / "capacity", m.mnt / "metrics.prom", m.mnt / "secrets"]
    before = {p: os.stat(p).st_ino for p in paths}
    _forget_all()
    assert {p: os.stat(p).st_ino for p in paths} == before
    found = run(["find", str(m.mnt / "pools"), "-inum",
                 str(before[vols / "v03.raw" / "capacity"])]).stdout.split()
    assert found == [str(vols / "v03.raw" / "capacity")]
    os.rmdir(vols / "v03.raw")
    os.mkdir(vols / "v03.raw")
    assert os.stat(vols / "v03.raw").st_ino != before[vols / "v03.raw"]
    # tar's incremental dump, after a forget, dumps no file again when nothing changed
    # (it lists every directory, with its names, in every level)
    snar, out1, out2 = tmp_path / "snar", tmp_path / "1.tar", tmp_path / "2.tar"
    run(["tar", "--listed-incremental", str(snar), "-cf", str(out1), "-C", str(vols),
         "v05.raw"])
    _forget_all()
    run(["tar", "--listed-incremental", str(snar), "-cf", str(out2), "-C", str(vols),
         "v05.raw"])
    first = run(["tar", "-tf", str(out1)]).stdout.split()
    listed = run(["tar", "-tf", str(out2)]).stdout.split()
    assert "v05.raw/capacity" in first
    assert [n for n in listed if not n.endswith("/")] == [], listed
