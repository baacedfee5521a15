"""A single-node Ceph cluster on 127.0.0.1 for the rbd tests and the benchmark: one mon,
one mgr, one memstore OSD, started by hand as ENVIRONMENT.md "Ceph on loopback" says
(no systemd), with its state, sockets, logs and config in a private directory, on mon
ports of its own, and stopped by the PIDs it started (never by name).

Two flavours, each started at most once per test session and only when a test asks for
it: ``ceph_cluster`` (auth none) and ``ceph_cephx`` (``auth ... required = cephx``, keys
made with ceph-authtool: client.admin for the fixture, client.storagefs with rbd caps on
the test pool for storagefs).

Ceph allows any number of clusters per machine as long as ports and directories differ;
another engineer's cluster on the default ports (3300/6789) does not disturb these.

Usable without pytest (the benchmark imports it): ``CephCluster(workdir).start()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

POOL = "rbdtest"
#: (v2, v1) mon ports of each flavour: ports no other test or engineer uses
PORTS = {"none": (13300, 16789), "cephx": (13302, 16791)}
START_TIMEOUT = 90.0


class CephCluster:
    def __init__(self, workdir: Path, auth: str = "none", ports: tuple[int, int] | None = None,
                 pool: str = POOL, memstore_bytes: int = 4 << 30) -> None:
        self.dir = Path(workdir)
        self.auth = auth
        self.v2, self.v1 = ports or PORTS[auth]
        self.pool = pool
        self.memstore_bytes = memstore_bytes
        self.fsid = str(uuidlib.uuid4())
        self.procs: dict[str, subprocess.Popen] = {}
        #: client keys (base64, as `ceph auth get-key` prints them) when auth is cephx
        self.admin_key = ""
        self.client_key = ""
        self.client_id = "storagefs"

    # ---- addresses and environment ------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def mon_addr(self) -> str:
        """host:port as a pool's <host name='127.0.0.1' port='...'/> gives it (v1)."""
        return f"127.0.0.1:{self.v1}"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, CEPH_CONF=str(self.conf))

    def ceph(self, *args: str, timeout: float = 60, check: bool = True,
             tool: str = "ceph") -> subprocess.CompletedProcess:
        res = subprocess.run([tool, "--conf", str(self.conf), *args], capture_output=True,
                             text=True, timeout=timeout, env=self.env)
        if check and res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: rc {res.returncode}: "
                               f"{res.stderr.strip()[-500:]}")
        return res

    def rbd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.ceph(*args, tool="rbd", **kw)

    def rbd_json(self, *args: str):
        return json.loads(self.rbd(*args, "--format", "json").stdout or "null")

    # ---- start -----------------------------------------------------------------------
    def _write_conf(self) -> None:
        d = self.dir
        auth = "cephx" if self.auth == "cephx" else "none"
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.v2},v1:127.0.0.1:{self.v1}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = {auth}
auth service required = {auth}
auth client required = {auth}
run dir = {d}/run
crash dir = {d}/crash
pid file = {d}/run/$name.pid
admin socket = {d}/run/$name.asok
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
osd crush chooseleaf type = 0
mgr initial modules = iostat
paxos propose interval = 0.1
mon tick interval = 1
mgr stats period = 1
mgr tick period = 1
osd mon report interval = 1
osd pool default pg autoscale mode = off
[mon]
mon data = {d}/mon.$id
log file = {d}/log/$name.log
[mgr]
mgr data = {d}/mgr.$id
log file = {d}/log/$name.log
[osd]
osd data = {d}/osd.$id
log file = {d}/log/$name.log
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
""")

    def _keys(self) -> None:
        """cephx: every daemon's and client's key in one keyring, imported by mon mkfs."""
        kr = str(self.dir / "keyring")
        if self.auth != "cephx":
            Path(kr).touch()
            return
        entities = [
            ("mon.", ["mon", "allow *"]),
            ("client.admin", ["mon", "allow *", "osd", "allow *", "mgr", "allow *",
                              "mds", "allow *"]),
            ("mgr.x", ["mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"]),
            ("osd.0", ["mon", "allow profile osd", "mgr", "allow profile osd",
                       "osd", "allow *"]),
            (f"client.{self.client_id}", ["mon", "profile rbd", "osd",
                                           f"profile rbd pool={self.pool}", "mgr",
                                           "profile rbd"]),
        ]
        first = True
        for name, caps in entities:
            argv = ["ceph-authtool", kr, *(["--create-keyring"] if first else []),
                    "--gen-key", "-n", name]
            for i in range(0, len(caps), 2):
                argv += ["--cap", caps[i], caps[i + 1]]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            first = False

        def key(name: str) -> str:
            return subprocess.run(["ceph-authtool", kr, "-p", "-n", name], check=True,
                                  capture_output=True, text=True, timeout=30).stdout.strip()

        self.admin_key = key("client.admin")
        self.client_key = key(f"client.{self.client_id}")

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.stdout", "ab")
        try:
            self.procs[name] = subprocess.Popen(
                [*argv, "-f", "--conf", str(self.conf)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=self.env, start_new_session=True)
        finally:
            log.close()

    def _wait(self, what: str, ok, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ceph {name} exited with {p.returncode} while "
                                       f"waiting for {what}; see {self.dir}/log")
            try:
                if ok():
                    return
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"ceph: {what} not reached within {timeout:g} s ({last})")

    def start(self) -> CephCluster:
        d = self.dir
        for sub in ("run", "log", "crash", "mon.a", "mgr.x", "osd.0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self._write_conf()
        try:
            self._keys()
            monmap = str(d / "monmap")
            subprocess.run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
                            f"[v2:127.0.0.1:{self.v2},v1:127.0.0.1:{self.v1}]", monmap],
                           check=True, capture_output=True, timeout=30)
            subprocess.run(["ceph-mon", "--conf", str(self.conf), "-i", "a", "--mkfs",
                            "--monmap", monmap, "--keyring", str(d / "keyring")],
                           check=True, capture_output=True, timeout=60, env=self.env)
            self._daemon("mon.a", ["ceph-mon", "-i", "a"])
            self._daemon("mgr.x", ["ceph-mgr", "-i", "x"])
            osd_id = self.ceph("osd", "create", timeout=60).stdout.strip()
            assert osd_id == "0", f"ceph osd create printed {osd_id!r}"
            subprocess.run(["ceph-osd", "--conf", str(self.conf), "-i", "0", "--mkfs"],
                           check=True, capture_output=True, timeout=60, env=self.env)
            self._daemon("osd.0", ["ceph-osd", "-i", "0"])
            self._wait("1 OSD up and in", self._osd_up)
            self.ceph("osd", "pool", "create", self.pool, "8")
            self.rbd("pool", "init", self.pool)
            self._wait("all PGs active+clean", self._clean)
        except BaseException:
            self.stop()
            raise
        return self

    def _osd_up(self) -> bool:
        st = json.loads(self.ceph("osd", "stat", "--format", "json", timeout=10).stdout)
        return st.get("num_up_osds") == 1 and st.get("num_in_osds") == 1

    def _clean(self) -> bool:
        st = json.loads(self.ceph("pg", "stat", "--format", "json", timeout=10).stdout)
        pgs = st.get("pg_summary", st)
        total = pgs.get("num_pgs", 0)
        by_state = pgs.get("num_pg_by_state", [])
        clean = sum(s.get("num", 0) for s in by_state if s.get("name") == "active+clean")
        return total > 0 and clean == total

    def create_pool(self, name: str, pgs: int = 8) -> None:
        self.ceph("osd", "pool", "create", name, str(pgs))
        self.rbd("pool", "init", name)
        self._wait("all PGs active+clean", self._clean)

    # ---- trouble on demand --------------------------------------------------------------
    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def pause(self, name: str = "osd.0") -> None:
        """SIGSTOP a daemon: the cluster stops answering (calls hang, nothing fails)."""
        os.kill(self.pid(name), signal.SIGSTOP)

    def resume(self, name: str = "osd.0") -> None:
        os.kill(self.pid(name), signal.SIGCONT)

    # ---- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGCONT then SIGKILL each daemon this object started (OSD first), by PID."""
        for name in ("osd.0", "mgr.x", "mon.a"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)

    def __enter__(self) -> CephCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


#: the clusters of this test session, by auth, with how many fixtures hold each: every
#: test module that imports the fixtures gets fixtures of its own (pytest keys them by
#: module), and they must share one cluster
_SHARED: dict[str, list] = {}


def _session_cluster(tmp_path_factory, auth: str):
    import shutil

    import pytest

    if auth in _SHARED:
        _SHARED[auth][1] += 1
        return _SHARED[auth][0]
    for tool in ("ceph-mon", "ceph-osd", "ceph-mgr", "rbd", "monmaptool", "ceph-authtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (contrib/install.sh installs ceph)")
    cluster = CephCluster(tmp_path_factory.mktemp(f"ceph-{auth}"), auth=auth)
    cluster.start()
    _SHARED[auth] = [cluster, 1]
    return cluster


def _release(auth: str) -> None:
    held = _SHARED.get(auth)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        _SHARED.pop(auth, None)
        held[0].stop()


try:
    import pytest

    @pytest.fixture(scope="session")
    def ceph_cluster(tmp_path_factory):
        """A Ceph cluster without authentication (auth none), pool ``rbdtest``."""
        cluster = _session_cluster(tmp_path_factory, "none")
        try:
            yield cluster
        finally:
            _release("none")

    @pytest.fixture(scope="session")
    def ceph_cephx(tmp_path_factory):
        """A Ceph cluster with cephx; ``.client_id``/``.client_key`` for storagefs."""
        cluster = _session_cluster(tmp_path_factory, "cephx")
        try:
            yield cluster
        finally:
            _release("cephx")
except ImportError:  # the benchmark uses CephCluster without pytest
    pass
