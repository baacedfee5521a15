"""Tier 1: the FUSE handlers driven directly, without a kernel mount (as S3QL's
t3_fs_api does): a real core over a real dir pool in tmp_path, every lookup balanced
by a forget, every refusal checked for its errno. The real-mount tests (tier 2) check
the same behaviour through the kernel."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
from pyfuse3 import FUSEError

from storagefs.fuse import operations as ops_mod
from storagefs.fuse.operations import Operations
from storagefs.fuse.render import README
from storagefs.mount import make_core

ROOT = pyfuse3.ROOT_INODE


def ctx(pid: int = 4242, uid: int = 0, gid: int = 0):
    return SimpleNamespace(pid=pid, uid=uid, gid=gid, umask=0o022)


class Fs:
    """Handler calls with lookup bookkeeping: every inode the kernel would hold is
    remembered with its count, and ``forget_all`` gives them back."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.held: dict[int, int] = {}

    def _hold(self, attrs) -> int:
        self.held[attrs.st_ino] = self.held.get(attrs.st_ino, 0) + 1
        return attrs.st_ino

    async def lookup(self, path: str) -> int:
        ino = ROOT
        for name in [p for p in path.split("/") if p]:
            ino = self._hold(await self.ops.lookup(ino, os.fsencode(name), ctx()))
        return ino

    async def attrs(self, path: str):
        return await self.ops.getattr(await self.lookup(path), ctx())

    async def listdir(self, path: str) -> list[str]:
        ino = await self.lookup(path)
        fh = await self.ops.opendir(ino, ctx())
        got: list[str] = []

        def reply(token, name, attrs, offset):
            got.append(os.fsdecode(name))
            self._hold(attrs)
            return True

        real = ops_mod.pyfuse3.readdir_reply
        ops_mod.pyfuse3.readdir_reply = reply
        try:
            await self.ops.readdir(fh, 0, None)
        finally:
            ops_mod.pyfuse3.readdir_reply = real
        await self.ops.releasedir(fh)
        return got

    async def read(self, path: str) -> bytes:
        fi = await self.ops.open(await self.lookup(path), os.O_RDONLY, ctx())
        try:
            return await self.ops.read(fi.fh, 0, 1 << 20)
        finally:
            await self.ops.flush(fi.fh)
            await self.ops.release(fi.fh)

    async def write(self, path: str, data: bytes, pid: int = 4242) -> None:
        fi = await self.ops.open(await self.lookup(path), os.O_WRONLY | os.O_TRUNC, ctx(pid))
        try:
            await self.ops.write(fi.fh, 0, data)
            await self.ops.flush(fi.fh)
        finally:
            await self.ops.release(fi.fh)

    async def mkdir(self, path: str) -> int:
        parent, name = os.path.split(path)
        pino = await self.lookup(parent)
        return self._hold(await self.ops.mkdir(pino, os.fsencode(name), 0o755, ctx()))

    async def rmdir(self, path: str) -> None:
        parent, name = os.path.split(path)
        await self.ops.rmdir(await self.lookup(parent), os.fsencode(name), ctx())

    async def forget_all(self) -> None:
        await self.ops.forget(list(self.held.items()))
        self.held.clear()


def run_fs(tmp_path, body):
    """Run ``body(fs)`` on a core over a state directory in tmp_path; afterwards every
    lookup is given back and the inode table must hold the root only."""

    async def main():
        core = await make_core(str(tmp_path / "state"))
        try:
            fs = Fs(Operations(core, README))
            async with trio.open_nursery() as nursery:
                await core.run_background(nursery)
                await body(fs, tmp_path)
                await fs.forget_all()
                left = [(i.path, i.lookups) for i in fs.ops.table.inodes.values()
                        if i is not fs.ops.table.root]
                assert left == [], f"inodes still held after every forget: {left}"
                nursery.cancel_scope.cancel()
        finally:
            core.state.close()

    trio.run(main)


async def errno_of(coro) -> int | None:
    try:
        await coro
    except FUSEError as exc:
        return exc.errno
    return None


def pool_doc(name: str, target) -> bytes:
    return (f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target>"
            "</pool>\n").encode()


def test_root_lists_the_tree_and_every_lookup_is_forgotten(tmp_path):
    async def body(fs, tmp):
        rest = ["events", "metrics", "metrics.prom", "pools", "secrets", "sources", "volumes"]
        assert await fs.listdir("") == ["README", "devices", *rest] \
            or await fs.listdir("") == ["README", *rest]
        assert b"storagefs" in await fs.read("README")
        names = await fs.listdir("pools/default")
        assert {"config.xml", "status.xml", "state", "control", "volumes"} <= set(names)
        assert (await fs.read("pools/default/state")) == b"running\n"

    run_fs(tmp_path, body)


def test_errnos_at_the_boundary(tmp_path):
    async def body(fs, tmp):
        o = fs.ops
        pools = await fs.lookup("pools")
        assert await errno_of(o.lookup(pools, b"nope", ctx())) == errno.ENOENT
        assert await errno_of(o.open(pools, os.O_RDONLY, ctx())) == errno.EISDIR
        status = await fs.lookup("pools/default/status.xml")
        assert await errno_of(o.open(status, os.O_WRONLY, ctx())) == errno.EACCES
        assert await errno_of(o.lookup(status, b"x", ctx())) == errno.ENOTDIR
        default = await fs.lookup("pools/default")
        assert await errno_of(o.unlink(default, b"status.xml", ctx())) == errno.EPERM
        assert await errno_of(o.rmdir(default, b"status.xml", ctx())) == errno.ENOTDIR
        assert await errno_of(o.rmdir(pools, b"default", ctx())) == errno.EBUSY
        assert await errno_of(o.mkdir(ROOT, b"x", 0o755, ctx())) == errno.EPERM
        assert await errno_of(o.symlink(default, b"l", b"/etc", ctx())) == errno.EPERM
        assert await errno_of(o.mkdir(pools, b".hidden", 0o755, ctx())) == errno.EINVAL
        # ENOSYS: the kernel then answers EOPNOTSUPP itself (tests/test_writers.py)
        assert await errno_of(o.getxattr(default, b"user.x", ctx())) == errno.ENOSYS
        vols = await fs.lookup("pools/default/volumes")
        assert await errno_of(o.rename(vols, b"a", vols, b"b", 0, ctx())) == errno.ENOENT
        assert (await fs.read("pools/default/error")).count(b"\n") == 1  # one line, last

    run_fs(tmp_path, body)


def test_pool_and_volume_life_through_handlers(tmp_path):
    target = tmp_path / "p1"

    async def body(fs, tmp):
        await fs.mkdir("pools/p1")
        assert await fs.listdir("pools/p1") == ["config.xml"]
        await fs.write("pools/p1/config.xml", pool_doc("p1", target))
        await fs.write("pools/p1/control", b"build\nstart\n")
        assert await fs.read("pools/p1/state") == b"running\n"
        await fs.mkdir("pools/p1/volumes/v1.qcow2")
        assert await fs.read("pools/p1/volumes/v1.qcow2/format") == b"qcow2\n"
        a = await fs.attrs("pools/p1/volumes/v1.qcow2/status.xml")
        assert stat.S_ISREG(a.st_mode) and a.st_mode & 0o777 == 0o444
        assert a.st_size == len(await fs.read("pools/p1/volumes/v1.qcow2/status.xml"))
        assert (target / "v1.qcow2").exists()
        await fs.rmdir("pools/p1/volumes/v1.qcow2")
        assert not (target / "v1.qcow2").exists()
        o = fs.ops
        vols = await fs.lookup("pools/p1/volumes")
        assert await errno_of(o.lookup(vols, b"v1.qcow2", ctx())) == errno.ENOENT
        await fs.write("pools/p1/state", b"inactive\n")
        await fs.rmdir("pools/p1")
        assert "p1" not in await fs.listdir("pools")

    run_fs(tmp_path, body)


def test_a_stale_inode_answers_enoent(tmp_path):
    async def body(fs, tmp):
        await fs.mkdir("pools/default/volumes/gone")
        ino = await fs.lookup("pools/default/volumes/gone/capacity")
        await fs.rmdir("pools/default/volumes/gone")
        assert await errno_of(fs.ops.getattr(ino, ctx())) == errno.ENOENT
        assert await errno_of(fs.ops.open(ino, os.O_RDONLY, ctx())) == errno.ENOENT

    run_fs(tmp_path, body)


def test_scratch_file_renamed_onto_config_xml_defines(tmp_path):
    target = tmp_path / "p2"
    target.mkdir()

    async def body(fs, tmp):
        await fs.mkdir("pools/p2")
        pdir = await fs.lookup("pools/p2")
        fi, attrs = await fs.ops.create(pdir, b".config.xml.tmp", 0o600, os.O_WRONLY, ctx())
        fs._hold(attrs)
        await fs.ops.write(fi.fh, 0, pool_doc("p2", target))
        await fs.ops.release(fi.fh)
        await fs.ops.rename(pdir, b".config.xml.tmp", pdir, b"config.xml", 0, ctx())
        assert b"<name>p2</name>" in await fs.read("pools/p2/config.xml")
        assert ".config.xml.tmp" not in await fs.listdir("pools/p2")
        assert "status.xml" in await fs.listdir("pools/p2")

    run_fs(tmp_path, body)


def test_scratch_directory_holds_scratch_files_only(tmp_path):
    async def body(fs, tmp):
        lock = "pools/default/config.xml20261201-1-x.lock"
        await fs.mkdir(lock)
        ldir = await fs.lookup(lock)
        fi, attrs = await fs.ops.create(ldir, b"f", 0o600, os.O_WRONLY, ctx())
        fs._hold(attrs)
        await fs.ops.release(fi.fh)
        assert await errno_of(fs.ops.mkdir(ldir, b"sub", 0o755, ctx())) == errno.EPERM
        parent = await fs.lookup("pools/default")
        name = os.fsencode(os.path.basename(lock))
        assert await errno_of(fs.ops.rmdir(parent, name, ctx())) == errno.ENOTEMPTY
        await fs.ops.unlink(ldir, b"f", ctx())
        await fs.ops.rmdir(parent, name, ctx())
        assert os.path.basename(lock) not in await fs.listdir("pools/default")

    run_fs(tmp_path, body)


def test_unlinked_config_xml_is_hidden_only_from_its_process(tmp_path):
    async def body(fs, tmp):
        pdir = await fs.lookup("pools/default")
        await fs.ops.unlink(pdir, b"config.xml", ctx(pid=100))
        assert await errno_of(fs.ops.lookup(pdir, b"config.xml", ctx(pid=100))) == errno.ENOENT
        attrs = await fs.ops.lookup(pdir, b"config.xml", ctx(pid=200))
        fs._hold(attrs)
        assert attrs.st_size > 0

    run_fs(tmp_path, body)


@pytest.mark.parametrize("cmd", [b"bogus\n", b"build nonsense\n", b"start now\n"])
def test_bad_commands_are_einval_and_change_nothing(tmp_path, cmd):
    async def body(fs, tmp):
        before = await fs.read("pools/default/state")
        fi = await fs.ops.open(await fs.lookup("pools/default/control"), os.O_WRONLY, ctx())
        assert await errno_of(fs.ops.write(fi.fh, 0, cmd)) == errno.EINVAL
        await fs.ops.release(fi.fh)
        assert await fs.read("pools/default/state") == before

    run_fs(tmp_path, body)
