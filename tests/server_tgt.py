"""An iSCSI target for the tests: tgtd (Debian's ``tgt``) on 127.0.0.1 at a port of its
own, with a management channel (``--control-port``) of its own, its LUNs backed by
sparse files in a temporary directory. Started once per test session (the
``tgt_server`` fixture), stopped by PID at the end.

tgtd keeps its configuration in memory only: :meth:`Tgt.kill` and :meth:`Tgt.start`
play "the server goes away and comes back" (targets, LUNs and accounts are set up
again from what this object remembers); :meth:`Tgt.pause` / :meth:`Tgt.resume`
(SIGSTOP/SIGCONT) play a server that stops answering.

Another tgtd on this machine (someone else's) does not disturb this one: each has its
own portal and its own ``/var/run/tgtd/socket.N``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SOCKET_DIR = Path("/var/run/tgtd")
IQN_PREFIX = "iqn.2026-11.org.storagefs.test"
INITIATOR = "iqn.2026-11.org.storagefs.test:initiator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_control_port() -> int:
    """A management channel no tgtd uses (its socket and lock file are absent)."""
    for _ in range(100):
        n = random.randint(10000, 32000)  # tgtd takes a short
        if not (SOCKET_DIR / f"socket.{n}").exists() and \
                not (SOCKET_DIR / f"socket.{n}.lock").exists():
            return n
    raise RuntimeError("no free tgtd control port found")


class Tgt:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.control = free_control_port()
        self.proc: subprocess.Popen | None = None
        #: tid -> (iqn, {lun: backing file}, [(user, outgoing)])
        self.targets: dict[int, tuple[str, dict[int, Path], list[tuple[str, bool]]]] = {}
        self.accounts: dict[str, str] = {}
        self._next_tid = 1

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- the daemon ---------------------------------------------------------------
    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "tgtd already runs"
        log = open(self.work / "tgtd.log", "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal={self.portal}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tgtd exited with {self.proc.returncode}: "
                                   f"{(self.work / 'tgtd.log').read_text()[-2000:]}")
            ok = subprocess.run(self._adm("--mode", "sys", "--op", "show"),
                                capture_output=True).returncode == 0
            if ok and self._listening():
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise RuntimeError("tgtd did not answer within 15 s")
        for user, password in self.accounts.items():
            self.adm("--mode", "account", "--op", "new", "--user", user, "--password", password)
        for tid, (iqn, luns, bound) in self.targets.items():
            self._make_target(tid, iqn)
            for lun, path in luns.items():
                self._make_lun(tid, lun, path)
            for user, outgoing in bound:
                self._bind_account(tid, user, outgoing)

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=1):
            return True
        return False

    def kill(self) -> None:
        """The server goes away (SIGKILL: tgtd keeps nothing on disk to tidy)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        for name in (f"socket.{self.control}", f"socket.{self.control}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (SOCKET_DIR / name).unlink()

    def ensure(self) -> None:
        """Running and answering (after a test that killed or paused it)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        else:
            self.resume()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    # ---- configuration --------------------------------------------------------------
    def _adm(self, *args: str) -> list[str]:
        return ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]

    def adm(self, *args: str) -> str:
        res = subprocess.run(self._adm(*args), capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def _make_target(self, tid: int, iqn: str) -> None:
        self.adm("--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", iqn)
        self.adm("--mode", "target", "--op", "bind", "--tid", str(tid),
                 "--initiator-address", "ALL")

    def _make_lun(self, tid: int, lun: int, path: Path) -> None:
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", str(lun),
                 "--backing-store", str(path))

    def _bind_account(self, tid: int, user: str, outgoing: bool) -> None:
        self.adm("--mode", "account", "--op", "bind", "--tid", str(tid), "--user", user,
                 *(["--outgoing"] if outgoing else []))

    def target(self, name: str, sizes: list[int] | tuple[int, ...] = ()) -> tuple[int, str]:
        """A new target ``IQN_PREFIX:name`` with LUNs 1.. of these sizes; (tid, iqn)."""
        tid, self._next_tid = self._next_tid, self._next_tid + 1
        iqn = f"{IQN_PREFIX}:{name}"
        self.targets[tid] = (iqn, {}, [])
        self._make_target(tid, iqn)
        for i, size in enumerate(sizes, start=1):
            self.add_lun(tid, i, size)
        return tid, iqn

    def add_lun(self, tid: int, lun: int, size: int) -> Path:
        path = self.work / f"t{tid}-lun{lun}.img"
        with open(path, "wb") as f:
            f.truncate(size)
        self._make_lun(tid, lun, path)
        self.targets[tid][1][lun] = path
        return path

    def remove_lun(self, tid: int, lun: int) -> None:
        self.adm("--mode", "logicalunit", "--op", "delete", "--tid", str(tid), "--lun",
                 str(lun))
        self.targets[tid][1].pop(lun).unlink()

    def lun_file(self, tid: int, lun: int) -> Path:
        return self.targets[tid][1][lun]

    def remove_target(self, tid: int) -> None:
        self.adm("--mode", "target", "--op", "delete", "--force", "--tid", str(tid))
        for path in self.targets.pop(tid)[1].values():
            path.unlink()

    def account(self, user: str, password: str) -> None:
        self.adm("--mode", "account", "--op", "new", "--user", user, "--password", password)
        self.accounts[user] = password

    def require_chap(self, tid: int, user: str, outgoing: bool = False) -> None:
        self._bind_account(tid, user, outgoing)
        self.targets[tid][2].append((user, outgoing))


@pytest.fixture(scope="session")
def tgt_server(tmp_path_factory):
    if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
        pytest.fail("tgtd/tgtadm missing: contrib/install.sh --test installs tgt",
                    pytrace=False)
    tgt = Tgt(tmp_path_factory.mktemp("tgt"))
    tgt.start()
    try:
        yield tgt
    finally:
        tgt.kill()
