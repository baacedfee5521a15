"""A GlusterFS server for the tests (ENVIRONMENT.md, "GlusterFS 10.3").

One glusterd per test session, with a private working directory, bound to 127.0.0.1
(``transport.socket.bind-address``; its bricks inherit the address), stopped by PID at
the end with the bricks it started. Volumes have one brick each, on this machine's host
name (glusterd refuses 127.0.0.1 and localhost as a brick host); clients reach them at
127.0.0.1.

glusterd listens on TCP 24007 and allows one per machine (its CLI and clients look for
it there): when one runs that this session did not start, the fixture fails at once and
names its pid. Nothing here touches another glusterd.

Use it from a test module::

    from server_gluster import gluster_server, gluster_volume  # noqa: F401

    def test_x(gluster_volume):            # a fresh started volume, removed afterwards
        gluster_volume.name, gluster_volume.server.host
        with gluster_volume.mounted(tmp_path / "m") as path:   # a client of our own
            (path / "file").write_bytes(b"...")

    def test_y(gluster_server):            # the server itself
        vol = gluster_server.create_volume("name")  # stopped and deleted by the session
        gluster_server.kill_brick(vol)      # the server going away (SIGKILL its brick)
        gluster_server.start_volume(vol, force=True)  # and back

Volumes get ``network.ping-timeout 5`` (clients give up on a silent brick after 5 s
instead of 42 s).

Several "hosts" on one machine (a test of pools shared by hosts): glusterd allows one per
machine, so run several storagefs mounts, each with its own ``--host-id`` (and state
directory), against the one volume; each host's gluster pool has its own private FUSE
client, so locks and listings go through GlusterFS as they would between machines.
``gluster_volume.mounted(path)`` adds a plain client (a program on yet another host).

Outside pytest (contrib/bench/bench_gluster.py): ``start_glusterd(workdir)`` returns the
process (GlusterdError when it cannot start), ``GlusterServer(workdir, proc)`` drives it,
``server.close()`` removes its volumes and stops it by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

GLUSTERD_PORT = 24007
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def _pids_named(name: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == name:
                    out.append(int(pid))
        except OSError:
            continue
    return out


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def gluster(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(["gluster", "--mode=script", *args], capture_output=True, text=True,
                         timeout=timeout)
    if check and (res.returncode != 0 or "failed" in res.stdout.lower()):
        raise AssertionError(f"gluster {' '.join(args)}: rc {res.returncode}\n"
                             f"{res.stdout}{res.stderr}")
    return res


def gluster_mounts(volume: str) -> list[str]:
    """Mountpoints of FUSE clients of ``volume`` (of its root or a subdirectory)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            fstype, source = fields[sep + 1], fields[sep + 2]
            path = source.split(":", 1)[-1]
            if fstype == "fuse.glusterfs" and (path == f"/{volume}" or
                                               path.startswith(f"/{volume}/")):
                found.append(fields[4].encode().decode("unicode_escape"))
    return found


@dataclass
class GlusterServer:
    workdir: Path
    proc: subprocess.Popen
    #: what clients connect to
    host: str = HOST
    #: the host name bricks are created on (not 127.0.0.1: glusterd refuses it)
    brick_host: str = socket.gethostname()

    def __post_init__(self) -> None:
        self.volumes: list[str] = []

    # ---- volumes ----------------------------------------------------------------------
    def create_volume(self, name: str | None = None) -> str:
        name = name or f"sf{uuid.uuid4().hex[:8]}"
        brick = self.workdir / "bricks" / name
        brick.mkdir(parents=True)
        gluster("volume", "create", name, f"{self.brick_host}:{brick}", "force")
        self.volumes.append(name)
        gluster("volume", "set", name, "network.ping-timeout", "5")
        self.start_volume(name)
        return name

    def start_volume(self, name: str, force: bool = False) -> None:
        gluster("volume", "start", name, *(["force"] if force else []))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self.brick_pid(name):
            time.sleep(0.1)
        assert self.brick_pid(name), f"the brick of {name} did not come up"

    def stop_volume(self, name: str) -> None:
        gluster("volume", "stop", name, "force", check=False)

    def delete_volume(self, name: str) -> None:
        for mnt in gluster_mounts(name):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        pid = self.brick_pid(name)
        self.stop_volume(name)
        gluster("volume", "delete", name, check=False)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if name in self.volumes:
            self.volumes.remove(name)
        shutil.rmtree(self.workdir / "bricks" / name, ignore_errors=True)

    def close(self) -> None:
        """Delete every volume this server made (unmounting their clients), stop it."""
        for name in list(self.volumes):
            self.delete_volume(name)
        stop_glusterd(self.proc)

    def brick_pid(self, name: str) -> int | None:
        """The pid of the volume's brick process (glusterfsd), None when it is down."""
        res = gluster("--xml", "volume", "status", name, check=False)
        try:
            root = etree.fromstring(res.stdout.encode())
        except etree.XMLSyntaxError:
            return None
        for node in root.iterfind(".//volStatus/volumes/volume/node"):
            pid, status = node.findtext("pid"), node.findtext("status")
            if status == "1" and pid and pid.isdigit() and int(pid) > 0:
                return int(pid)
        return None

    def kill_brick(self, name: str) -> int:
        """SIGKILL the volume's brick (the server going away); its pid."""
        pid = self.brick_pid(name)
        assert pid, f"{name} has no brick running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        return pid

    def brick_dir(self, name: str) -> Path:
        return self.workdir / "bricks" / name

    @contextlib.contextmanager
    def mounted(self, name: str, path: Path, subdir: str = ""):
        """A FUSE client of our own (another program on another host, for the tests)."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "glusterfs", f"{self.host}:/{name}{subdir}", str(path)],
                       check=True, capture_output=True, timeout=60)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


class GlusterdError(RuntimeError):
    """glusterd cannot be started here (one runs already, or it did not come up)."""


def start_glusterd(workdir: Path) -> subprocess.Popen:
    """Start a private glusterd (working dir and logs under ``workdir``, bound to
    127.0.0.1) and wait until its CLI answers; GlusterdError when it cannot. Used by the
    fixture and by contrib/bench/bench_gluster.py; stop it with ``stop_glusterd``."""
    running = _pids_named("glusterd")
    if running or _port_open(GLUSTERD_PORT):
        raise GlusterdError(
            f"a glusterd this test session did not start is running (pid "
            f"{', '.join(map(str, running)) or '?'} / port {GLUSTERD_PORT} in use): "
            "glusterd allows one per machine; stop it or run these tests elsewhere")
    wd = workdir / "wd"
    wd.mkdir(parents=True)
    for sub in ("groups", "hooks"):
        if os.path.isdir(f"/var/lib/glusterd/{sub}"):
            shutil.copytree(f"/var/lib/glusterd/{sub}", wd / sub)
    conf = Path("/etc/glusterfs/glusterd.vol").read_text()
    conf = conf.replace("/var/lib/glusterd", str(wd))
    conf = conf.replace("end-volume", "    option transport.socket.bind-address 127.0.0.1\n"
                        "end-volume")
    (workdir / "glusterd.vol").write_text(conf)
    log = open(workdir / "glusterd.out", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        ["glusterd", "-N", "-f", str(workdir / "glusterd.vol"), "-l",
         str(workdir / "glusterd.log"), "-p", str(workdir / "glusterd.pid")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GlusterdError(f"glusterd exited with {proc.returncode}: see "
                                f"{workdir}/glusterd.log")
        if gluster("pool", "list", check=False, timeout=10).returncode == 0:
            return proc
        time.sleep(0.2)
    stop_glusterd(proc)
    raise GlusterdError(f"glusterd did not answer within {START_TIMEOUT:g} s")


def stop_glusterd(proc: subprocess.Popen) -> None:
    """Stop the glusterd we started, by its pid (never another one)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


#: the session's one glusterd and how many modules' ``gluster_server`` hold it: a
#: session fixture imported into two test modules is two fixtures to pytest, and
#: glusterd allows one per machine, so they share it (as server_ceph.py's clusters)
_SHARED: list = []


@pytest.fixture(scope="session")
def gluster_server(tmp_path_factory):
    for tool in ("glusterd", "gluster", "mount.glusterfs"):
        if shutil.which(tool) is None and not os.path.exists(f"/sbin/{tool}"):
            pytest.skip(f"{tool} not installed (Debian: glusterfs-server, glusterfs-client)")
    if not _SHARED:
        workdir = tmp_path_factory.mktemp("glusterd")
        try:
            proc = start_glusterd(workdir)
        except GlusterdError as exc:
            pytest.fail(str(exc), pytrace=False)
        _SHARED[:] = [GlusterServer(workdir, proc), 0]
    _SHARED[1] += 1
    server = _SHARED[0]
    try:
        yield server
    finally:
        _SHARED[1] -= 1
        if _SHARED[1] <= 0:
            _SHARED.clear()
            server.close()


@dataclass
class Volume:
    server: GlusterServer
    name: str

    @property
    def brick(self) -> Path:
        return self.server.brick_dir(self.name)

    def mounted(self, path: Path, subdir: str = ""):
        return self.server.mounted(self.name, path, subdir)


@pytest.fixture
def gluster_volume(gluster_server):
    """A fresh started one-brick volume, stopped and deleted after the test (with every
    FUSE mount of it: private mounts of gluster pools included)."""
    name = gluster_server.create_volume()
    try:
        yield Volume(gluster_server, name)
    finally:
        gluster_server.delete_volume(name)
