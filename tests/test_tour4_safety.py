"""Tour 4 (safety): a secret's file left by a killed storagefs (in the state directory,
removed at the next start, never in /tmp), the events reader limit per user, and pool
targets inside another storagefs mount."""

from __future__ import annotations

import errno
import glob
import os
import threading
import time

import pytest
from mount_helpers import (
    assert_one_error_line,
    command,
    define_pool,
    pool_xml,
    processes_naming,
    read,
    write,
    write_errno,
)
from server_ceph import POOL, ceph_cephx  # noqa: F401
from test_other_users import other_user  # noqa: F401

SECRET = "7a2b4c6d-8e9f-4a1b-9c2d-3e4f5a6b7c8d"
AUTH = (f"    <auth username='{{user}}' type='ceph'>\n      <secret uuid='{SECRET}'/>\n"
        "    </auth>\n")


def _files_holding(root: str, needle: bytes) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                with open(p, "rb") as f:
                    if needle in f.read():
                        found.append(p)
            except OSError:
                pass
    return found


# ---- A: the key of a killed storagefs's tool ----------------------------------------------------
@pytest.mark.log_allows(r"removed .*secrets-tmp.*killed while a tool ran")
def test_key_file_of_a_killed_storagefs_is_removed_at_the_next_start(
        mounted, ceph_cephx):  # noqa: F811
    m, c = mounted, ceph_cephx
    s = m.mnt / "secrets" / SECRET
    os.mkdir(s)
    write(s / "config.xml", f"<secret ephemeral='no' private='yes'>\n  <uuid>{SECRET}</uuid>\n"
                            "  <usage type='ceph'>\n    <name>client.t4</name>\n"
                            "  </usage>\n</secret>\n")
    write(s / "value", c.client_key + "\n")
    p = m.pool("rb")
    os.mkdir(p)
    write(p / "config.xml",
          f"<pool type='rbd'>\n  <name>rb</name>\n  <source>\n    <name>{POOL}</name>\n"
          f"    <host name='127.0.0.1' port='{c.v1}'/>\n"
          f"{AUTH.format(user=c.client_id)}  </source>\n</pool>\n")
    command(p / "control", "start")
    command(p / "control", "create stale1 800M")
    before = set(glob.glob("/tmp/storagefs-*"))
    secrets_tmp = m.state_dir / "run" / "secrets-tmp"

    def wipe() -> None:
        try:
            write(p / "volumes" / "stale1" / "control", "wipe zero\n")
        except OSError:
            pass  # ENOTCONN: the server was killed

    t = threading.Thread(target=wipe, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _files_holding(str(secrets_tmp),
                                                             c.client_key.encode()):
        time.sleep(0.02)
    m.kill()
    left = _files_holding(str(secrets_tmp), c.client_key.encode())
    assert left, "no keyring in STATE/run/secrets-tmp while the tool ran"
    # nothing holding the key went to /tmp
    for d in set(glob.glob("/tmp/storagefs-*")) - before:
        assert not _files_holding(d, c.client_key.encode()), d
    t.join(10)
    deadline = time.monotonic() + 60
    while processes_naming(os.fsencode(str(m.base))) and time.monotonic() < deadline:
        time.sleep(0.05)  # the killed storagefs's qemu-img, still writing
    m.recover()
    m.start()
    # the key is in secrets/UUID.value and nowhere else: not in the state dir, not in /tmp
    holding = _files_holding(str(m.state_dir), c.client_key.encode())
    assert [os.path.basename(f) for f in holding] == [f"{SECRET}.value"], holding
    assert os.listdir(secrets_tmp) == []
    for d in glob.glob("/tmp/storagefs-*"):
        assert not _files_holding(d, c.client_key.encode()), d
    for f in left:
        assert f"removed {f}" in m.log()
    assert c.client_key not in m.log()
    assert read(p / "state") == "running\n"
    os.rmdir(p / "volumes" / "stale1")


# ---- B: the readers of events, per user ---------------------------------------------------------
def _hold_events(user, cwd, want: int):
    """A child that became ``user`` (after entering ``cwd`` as root) opens events until
    ENFILE or ``want`` opens; returns (pid, opens, errno name, the pipe that ends it)."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(w2)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            fds, err = [], "none"
            while len(fds) < want:
                try:
                    fds.append(os.open("events", os.O_RDONLY | os.O_NONBLOCK))
                except OSError as e:
                    err = errno.errorcode.get(e.errno, str(e.errno))
                    break
            os.write(w, f"{len(fds)} {err}\n".encode())
            os.read(r2, 1)  # hold them until the parent closes its end
        finally:
            os._exit(0)
    os.close(w)
    os.close(r2)
    with os.fdopen(r) as f:
        count, err = f.readline().split()
    return pid, int(count), err, w2


@pytest.mark.log_allows(r"readers of events")
def test_one_user_cannot_take_roots_readers_of_events(mount_factory, other_user):
    m = mount_factory(extra=("--allow-other",))
    pid, count, err, hold = _hold_events(other_user, m.mnt, 200)
    try:
        assert err == "ENFILE" and 0 < count < 64, (count, err)
        # root still opens events (its own share), and reads its stream
        fds = [os.open(m.mnt / "events", os.O_RDONLY | os.O_NONBLOCK) for _ in range(count)]
        try:
            assert b"storagefs events opened" in os.read(fds[0], 4096)
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        os.close(hold)
        os.waitpid(pid, 0)
    # the user's opens were given back
    fd = os.open(m.mnt / "events", os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)


# ---- C: a pool target or source inside another storagefs mount --------------------------------
def _second_mount(mount_factory, tmp_path, name: str):
    m = mount_factory(name=name, create_state=False, start=False)
    m.state_dir = tmp_path / f"state-{name}"
    m.state_dir.mkdir()
    m.start()
    return m


def _refused(m, name: str, doc: str) -> str:
    pdir = m.pool(name)
    os.mkdir(pdir)
    got = write_errno(pdir / "config.xml", doc)
    assert got == (errno.EPERM, "write"), (name, got)
    line = assert_one_error_line(pdir)
    assert write_errno(pdir / "state", "running\n")[0] == errno.ENOENT  # nothing defined
    return line


def test_a_pool_inside_another_storagefs_mount_is_refused(mount_factory, tmp_path):
    m1 = mount_factory()
    m2 = _second_mount(mount_factory, tmp_path, "mnt2")
    inner = m2.pool() / "volumes"
    before = sorted(os.listdir(inner))
    line = _refused(m1, "in2", pool_xml("in2", inner))
    assert f"inside {m2.mnt}, the mount of another storagefs" in line, line
    alias = tmp_path / "alias"
    alias.symlink_to(m2.pools)
    line = _refused(m1, "alias2", pool_xml("alias2", alias / "default"))
    assert "the mount of another storagefs" in line, line
    # every pool type: a netfs target, an fs pool's source device
    netfs = ("<pool type='netfs'><name>n3</name><source><host name='127.0.0.1'/>"
             "<dir path='/t4v'/><format type='glusterfs'/></source>"
             f"<target><path>{inner}</path></target></pool>")
    assert "another storagefs" in _refused(m1, "n3", netfs)
    fs = ("<pool type='fs'><name>f3</name><source>"
          f"<device path='{inner}/x.img'/><format type='ext4'/></source>"
          f"<target><path>{tmp_path / 'f3'}</path></target></pool>")
    assert "another storagefs" in _refused(m1, "f3", fs)
    assert sorted(os.listdir(inner)) == before
    # nor does a sources query look there
    for kind in ("fs", "disk"):
        k = m1.mnt / "sources" / kind
        assert write_errno(k / "query", f"{inner}\n")[0] == errno.EINVAL
        assert "the mount of another storagefs" in assert_one_error_line(k)
    # a storagefs mounted after the define: start refuses it
    later = tmp_path / "mnt3"
    define_pool(m1, "later", later / "sub", build=False, start=False)
    _second_mount(mount_factory, tmp_path, "mnt3")
    assert write_errno(m1.pool("later") / "state", "running\n") == (errno.EPERM, "write")
    assert "the mount of another storagefs" in assert_one_error_line(m1.pool("later"))
    assert read(m1.pool("later") / "state") == "inactive\n"
