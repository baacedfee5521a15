"""Issue 7, "Other users", on real mounts: the kernel keeps a non-root user to
reading (SPEC "Permissions": everything is root's; without allow_other no one
else sees the tree; with it, others may read but not change, the kernel
checking modes through default_permissions; secret values are 0600).

The test creates a system user of its own (`useradd -M -r`, removed again with
`userdel`). pytest's tmp_path lies under a 0700 directory that the user cannot
traverse, so the user's processes start with their working directory already
inside the mountpoint (entered as root, before dropping privileges) and use
relative paths: every access below the mountpoint is still checked by the FUSE
mount, which is what is under test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mount_helpers import (
    define_pool,
    mount_options,
    read,
    read_bytes,
    volume_xml,
    write,
)

SECRET_UUID = "5b2e6f0a-7c1d-4e8f-9a3b-2c4d6e8f0a1b"
SECRET_VALUE = "sfs-other-users-passphrase-7731"
REFUSED = {"EACCES", "EPERM"}


@dataclass
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    missing = [t for t in ("useradd", "userdel", "runuser") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)}")
    name = f"sfs-test-{uuid.uuid4().hex[:8]}"
    res = subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"useradd {name}: {res.stderr}"
    try:
        pw = pwd.getpwnam(name)
        assert pw.pw_uid != 0
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
        # no account is left behind, whatever the test did
        with pytest.raises(KeyError):
            pwd.getpwnam(name)


def as_user(user: User, cwd: Path, ops: dict) -> dict[str, list]:
    """Run each op (a callable of no arguments, using paths relative to cwd) in a
    forked child that entered cwd as root and then became `user`. Returns
    {name: ["ok", result]} or {name: ["err", "EACCES"]}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls, then _exit
        code = 0
        try:
            os.close(r)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            out = {}
            for name, fn in ops.items():
                try:
                    res = fn()
                    out[name] = ["ok", res if isinstance(res, (str, int, list)) else None]
                except OSError as e:
                    out[name] = ["err", errno.errorcode.get(e.errno, str(e.errno))]
            data = json.dumps(out).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"__child_error__": ["err", repr(e)]}).encode()
            code = 1
        try:
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([r], [], [], 60)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("the other user's process hung for 60 s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks) or b"{}")
    assert "__child_error__" not in out, out["__child_error__"]
    return out


def run_as(user: User, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """A real command as the user (runuser), started in cwd."""
    return subprocess.run(["runuser", "-u", user.name, "--", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LC_ALL": "C"})


SIZES = re.compile(r"(<(capacity|allocation|available)\b[^>]*>)\d+(</)")


def steady(text: str) -> str:
    """status.xml without the live figures that other activity on the host's
    filesystem changes between two reads (allocation, available ...)."""
    return SIZES.sub(r"\1N\3", text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _open(path: str, flags: int):
    def op():
        fd = os.open(path, flags, 0o644)
        os.close(fd)
    return op


def snapshot(m) -> dict:
    """Everything a change would show: the tree as root reads it, and the state dir."""
    snap = {}
    for top in ("pools", "secrets"):
        for dirpath, dirnames, filenames in os.walk(m.mnt / top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, m.mnt)
            snap[rel] = sorted(dirnames + filenames)
            for name in filenames:
                p = Path(dirpath) / name
                st = os.lstat(p)
                key = f"{rel}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    snap[key] = os.readlink(p)
                    continue
                snap[key + " mode"] = stat.S_IMODE(st.st_mode)
                if name in ("config.xml", "state", "autostart", "error", "value", "capacity"):
                    snap[key] = read_bytes(p).decode(errors="replace")
                if name == "config.xml":
                    snap[key + " mtime"] = st.st_mtime_ns
    for p in sorted(m.state_dir.rglob("*")):
        if p.is_file() and not p.is_symlink():
            snap[f"state:{p.relative_to(m.state_dir)}"] = hashlib.sha256(
                p.read_bytes() if p.stat().st_size < (1 << 20) else b"big").hexdigest()
            snap[f"state:{p.relative_to(m.state_dir)} size"] = p.stat().st_size
    return snap


def populate(m, tmp_path: Path) -> None:
    """An inactive pool p1, a volume v1 in default, a secret with a value."""
    define_pool(m, "p1", tmp_path / "p1", build=False, start=False)
    os.mkdir(m.vol("v1"))
    write(m.vol("v1") / "config.xml", volume_xml("v1", 2 << 30))
    s = m.mnt / "secrets" / SECRET_UUID
    os.mkdir(s)
    write(s / "config.xml",
          f"<secret ephemeral='no' private='no'>\n  <uuid>{SECRET_UUID}</uuid>\n"
          f"  <usage type='volume'>\n    <volume>/x/enc.qcow2</volume>\n  </usage>\n"
          f"</secret>\n")
    write(s / "value", SECRET_VALUE + "\n")


@pytest.fixture
def shared(mount_factory, tmp_path):
    m = mount_factory(extra=("--allow-other",))
    populate(m, tmp_path)
    return m


def test_mount_has_allow_other_and_default_permissions(shared):
    opts = mount_options(shared.mnt).split(",")
    assert "allow_other" in opts and "default_permissions" in opts, opts


def test_other_user_can_read_the_tree(shared, other_user):
    m = shared
    uuid_ = read(m.pool() / "uuid").strip()
    s = f"secrets/{SECRET_UUID}"
    got = as_user(other_user, m.mnt, {
        "ls .": lambda: sorted(os.listdir(".")),
        "ls pools": lambda: sorted(os.listdir("pools")),
        "ls pools/default": lambda: sorted(os.listdir("pools/default")),
        "ls volumes": lambda: sorted(os.listdir("pools/default/volumes")),
        "README": lambda: _read("README"),
        "status.xml": lambda: steady(_read("pools/default/status.xml")),
        "config.xml": lambda: _read("pools/default/config.xml"),
        "state": lambda: _read("pools/default/state"),
        "control": lambda: _read("pools/default/control"),
        "by-uuid": lambda: os.readlink(f"pools/by-uuid/{uuid_}"),
        "v1 status.xml": lambda: steady(_read("pools/default/volumes/v1/status.xml")),
        "v1 path": lambda: os.readlink("pools/default/volumes/v1/path"),
        "secret config.xml": lambda: _read(f"{s}/config.xml"),
        "secret value": lambda: _read(f"{s}/value"),
    })
    want = {
        "ls .": sorted(os.listdir(m.mnt)),
        "ls pools": sorted(os.listdir(m.pools)),
        "ls pools/default": sorted(os.listdir(m.pool())),
        "ls volumes": sorted(os.listdir(m.pool() / "volumes")),
        "README": read(m.mnt / "README"),
        "status.xml": steady(read(m.pool() / "status.xml")),
        "config.xml": read(m.pool() / "config.xml"),
        "state": read(m.pool() / "state"),
        "control": read(m.pool() / "control"),
        "by-uuid": os.readlink(m.pools / "by-uuid" / uuid_),
        "v1 status.xml": steady(read(m.vol("v1") / "status.xml")),
        "v1 path": os.readlink(m.vol("v1") / "path"),
        "secret config.xml": read(m.mnt / s / "config.xml"),
    }
    for name, value in want.items():
        assert got[name] == ["ok", value], f"{name}: the other user got {got[name]}"
    assert got["secret value"] == ["err", "EACCES"], got["secret value"]
    assert stat.S_IMODE(os.stat(m.mnt / s / "value").st_mode) == 0o600


def test_other_user_reads_with_ls_and_cat(shared, other_user):
    m = shared
    res = run_as(other_user, m.mnt, "ls", "-la", "pools/default")
    assert res.returncode == 0, res.stderr
    assert "config.xml" in res.stdout and "status.xml" in res.stdout
    res = run_as(other_user, m.mnt, "cat", "README", "pools/default/status.xml")
    assert res.returncode == 0, res.stderr
    assert steady(res.stdout) == steady(read(m.mnt / "README") + read(m.pool() / "status.xml"))
    res = run_as(other_user, m.mnt, "cat", f"secrets/{SECRET_UUID}/value")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    assert SECRET_VALUE not in res.stdout
    # the value appears in no file the user can read
    res = run_as(other_user, m.mnt, "grep", "-r", "-l", "-F", SECRET_VALUE, ".")
    assert res.returncode == 2, res  # 2: the unreadable value file; 0 would be a find
    assert res.stdout == "", f"the secret value is readable in {res.stdout!r}"
    assert f"secrets/{SECRET_UUID}/value: Permission denied" in res.stderr, res.stderr


def test_every_change_by_other_user_is_refused_and_changes_nothing(shared, other_user):
    m = shared
    log_before = len(m.log())
    before = snapshot(m)
    p1, v1, s = "pools/p1", "pools/default/volumes/v1", f"secrets/{SECRET_UUID}"
    wo, trunc = os.O_WRONLY, os.O_WRONLY | os.O_TRUNC
    ops = {
        "write config.xml": _open(f"{p1}/config.xml", wo),
        "truncate-open config.xml": _open(f"{p1}/config.xml", trunc),
        "O_RDONLY|O_TRUNC config.xml": _open(f"{p1}/config.xml", os.O_RDONLY | os.O_TRUNC),
        "write state": _open(f"{p1}/state", trunc),
        "write autostart": _open(f"{p1}/autostart", trunc),
        "write control": _open(f"{p1}/control", trunc),
        "write status.xml": _open(f"{p1}/status.xml", wo),
        "write volume config.xml": _open(f"{v1}/config.xml", trunc),
        "write volume control": _open(f"{v1}/control", trunc),
        "write secret value": _open(f"{s}/value", trunc),
        "write secret config.xml": _open(f"{s}/config.xml", trunc),
        "create scratch file": _open(f"{p1}/.config.xml.swp", os.O_WRONLY | os.O_CREAT),
        "create in pools/": _open("pools/x.xml", os.O_WRONLY | os.O_CREAT),
        "truncate()": lambda: os.truncate(f"{p1}/config.xml", 0),
        "mkdir pool": lambda: os.mkdir("pools/intruder"),
        "mkdir volume": lambda: os.mkdir("pools/default/volumes/intruder"),
        "mkdir secret": lambda: os.mkdir("secrets/11111111-2222-3333-4444-555555555555"),
        "rmdir pool": lambda: os.rmdir(p1),
        "rmdir volume": lambda: os.rmdir(v1),
        "rmdir secret": lambda: os.rmdir(s),
        "rename pool": lambda: os.rename(p1, "pools/p9"),
        "rename volume": lambda: os.rename(v1, "pools/default/volumes/v9"),
        "rename config.xml aside": lambda: os.rename(f"{p1}/config.xml", f"{p1}/config.xml~"),
        "rename onto config.xml": lambda: os.rename(f"{p1}/status.xml", f"{p1}/config.xml"),
        "unlink config.xml": lambda: os.unlink(f"{p1}/config.xml"),
        "unlink status.xml": lambda: os.unlink(f"{p1}/status.xml"),
        "unlink secret value": lambda: os.unlink(f"{s}/value"),
        "chmod config.xml": lambda: os.chmod(f"{p1}/config.xml", 0o666),
        "chmod pool dir": lambda: os.chmod(p1, 0o777),
        "chmod secret value": lambda: os.chmod(f"{s}/value", 0o644),
        "chown config.xml": lambda: os.chown(f"{p1}/config.xml", os.getuid(), os.getgid()),
        "touch config.xml (now)": lambda: os.utime(f"{p1}/config.xml"),
        "touch config.xml (a time)": lambda: os.utime(f"{p1}/config.xml", (0, 0)),
        "symlink in pool": lambda: os.symlink("config.xml", f"{p1}/link"),
        "hard link of config.xml": lambda: os.link(f"{p1}/config.xml", f"{p1}/hard"),
        "mkfifo in pool": lambda: os.mkfifo(f"{p1}/fifo"),
        "setxattr": lambda: os.setxattr(f"{p1}/config.xml", "user.x", b"1"),
    }
    got = as_user(other_user, m.mnt, ops)
    allowed = {name: res for name, res in got.items() if res[0] != "err" or res[1] not in REFUSED}
    print(f"{len(ops)} kinds of change tried by {other_user.name}: "
          f"{len(ops) - len(allowed)} refused with EACCES/EPERM")
    assert not allowed, f"not refused with EACCES/EPERM: {allowed}"
    assert snapshot(m) == before, "a refused change by the other user changed something"
    # refused by the kernel: storagefs saw none of it, so logged no refusal
    new_log = m.log()[log_before:]
    assert "refused" not in new_log and "intruder" not in new_log, new_log[-2000:]


def test_shell_commands_of_other_user_are_refused(shared, other_user):
    m = shared
    before = snapshot(m)
    commands = [
        ["sh", "-c", "echo stop > pools/default/control"],
        ["sh", "-c", "echo inactive > pools/default/state"],
        ["sh", "-c", "echo '<pool/>' > pools/p1/config.xml"],
        ["mkdir", "pools/intruder"],
        ["mkdir", "pools/default/volumes/intruder"],
        ["rmdir", "pools/p1"],
        ["rm", "-rf", "pools/p1"],
        ["mv", "pools/p1", "pools/p2"],
        ["cp", "pools/p1/config.xml", "pools/p1/copy.xml"],
        ["sed", "-i", "s/p1/p2/", "pools/p1/config.xml"],
        ["chmod", "0777", "pools/p1/config.xml"],
        ["touch", "pools/p1/config.xml"],
        ["truncate", "-s", "0", "pools/p1/config.xml"],
        ["ln", "-s", "/etc/passwd", "pools/p1/link"],
    ]
    for argv in commands:
        res = run_as(other_user, m.mnt, *argv)
        assert res.returncode != 0, f"{argv} succeeded for {other_user.name}"
        assert ("Permission denied" in res.stderr or "Operation not permitted" in res.stderr), (
            f"{argv}: {res.stderr!r}")
    assert snapshot(m) == before


def test_without_allow_other_other_user_sees_nothing(mount_factory, other_user, tmp_path):
    m = mount_factory()
    populate(m, tmp_path)
    assert "allow_other" not in mount_options(m.mnt).split(",")
    got = as_user(other_user, m.mnt, {
        "stat .": lambda: os.stat(".").st_mode,
        "ls .": lambda: os.listdir("."),
        "README": lambda: _read("README"),
        "stat pools": lambda: os.stat("pools").st_mode,
        "status.xml": lambda: _read("pools/default/status.xml"),
        "mkdir pool": lambda: os.mkdir("pools/intruder"),
    })
    for name, res in got.items():
        assert res == ["err", "EACCES"], f"{name}: the other user got {res}"
    res = run_as(other_user, m.mnt, "ls", "-la", ".")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    res = run_as(other_user, m.mnt, "cat", "README")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    # root still sees everything
    assert "p1" in os.listdir(m.pools)


def test_root_chmod_of_a_pool_directory_is_kept_or_refused(shared, other_user):
    """`chmod 700 pools/p1` to keep others out of one pool: storagefs must either
    apply it (the other user is then kept out) or refuse it; returning success
    and leaving the directory 0755 would make the root user believe it is hidden."""
    m = shared
    p1 = m.pool("p1")
    try:
        os.chmod(p1, 0o700)
    except OSError as e:
        assert e.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES), e
        return
    mode = stat.S_IMODE(os.stat(p1).st_mode)
    got = as_user(other_user, m.mnt, {"ls pools/p1": lambda: sorted(os.listdir("pools/p1"))})
    assert mode == 0o700 and got["ls pools/p1"] == ["err", "EACCES"], (
        f"chmod 700 pools/p1 succeeded, but the directory's mode is {mode:o} and the other "
        f"user's ls gets {got['ls pools/p1']}")


def test_root_chmod_of_config_xml_keeps_other_user_out(shared, other_user):
    m = shared
    os.chmod(m.pool("p1") / "config.xml", 0o600)
    assert stat.S_IMODE(os.stat(m.pool("p1") / "config.xml").st_mode) == 0o600
    got = as_user(other_user, m.mnt, {"cat": lambda: _read("pools/p1/config.xml")})
    assert got["cat"] == ["err", "EACCES"], got
