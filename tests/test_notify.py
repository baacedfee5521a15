"""A service systemd can trust (contrib/storagefs.service, Type=notify): the
sd_notify protocol seen by a datagram socket the test listens on, as systemd's
would (this machine runs no systemd as init); journal logging when $JOURNAL_STREAM
names storagefs's stderr; and ``systemd-analyze verify`` of the unit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mount_helpers import read, write

from storagefs.notify import Notifier

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "storagefs.service"


class Listener:
    """systemd's end of $NOTIFY_SOCKET: a datagram socket, a path or abstract."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 15, value: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if key in msg and (value is None or value in msg[key]):
                    return msg
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value or ''} within {timeout} s: "
                                     f"{self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1)
                                      for line in data.decode().split("\n") if line))

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def close(self) -> None:
        self.sock.close()


def test_ready_status_and_stopping(mount_factory, tmp_path):
    path = tmp_path / "notify"
    listener = Listener(str(path))
    try:
        m = mount_factory(env={**os.environ, "NOTIFY_SOCKET": str(path)})
        ready = listener.wait_for("READY", 5)  # sent by the time the tree answers
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(m.proc.pid)
        assert ready["STATUS"] == "1 pools (1 running), 0 volumes"
        os.mkdir(m.pool("two"))
        write(m.pool("two") / "config.xml",
              f"<pool type='dir'><name>two</name><target><path>{tmp_path}/t</path>"
              "</target></pool>\n")
        os.mkdir(m.vol("v.raw"))
        listener.wait_for("STATUS", 15, "2 pools (1 inactive, 1 running), 1 volumes")
        assert listener.count("READY") == 1
        assert listener.count("WATCHDOG") == 0  # no WATCHDOG_USEC: no pings
        assert read(m.mnt / "README")  # the tree answered throughout
        m.stop()
        stopping = listener.wait_for("STOPPING", 5)
        assert stopping["STOPPING"] == "1"
        m.start()  # for the fixture's checks; the socket was taken from its environment
    finally:
        listener.close()


def test_watchdog_pings_on_an_abstract_socket(mount_factory, tmp_path):
    name = f"storagefs-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = Listener(b"\0" + name.encode())
    try:
        m = mount_factory(env={**os.environ, "NOTIFY_SOCKET": "@" + name,
                               "WATCHDOG_USEC": "600000"})
        listener.wait_for("READY", 5)
        t0 = time.monotonic()
        for _ in range(4):  # every half interval, while the tree answers
            listener.wait_for("WATCHDOG", 3)
            listener.messages = [x for x in listener.messages if "WATCHDOG" not in x]
        assert time.monotonic() - t0 < 4
        m.proc.send_signal(15)  # systemctl stop
        assert listener.wait_for("STOPPING", 5)["STATUS"] == "signal 15: unmounting"
        assert m.proc.wait(timeout=15) == 0
        m.start()
    finally:
        listener.close()


def test_watchdog_of_another_pid_is_not_ours(mount_factory, tmp_path):
    path = tmp_path / "notify"
    listener = Listener(str(path))
    try:
        mount_factory(env={**os.environ, "NOTIFY_SOCKET": str(path),
                           "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
        listener.wait_for("READY", 5)
        time.sleep(1.5)
        assert listener.count("WATCHDOG") == 0
    finally:
        listener.close()


def test_notify_variables_are_taken_from_the_environment():
    """Host tools never see them (they would speak for the service)."""
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier(env)
    assert env == {"PATH": "/bin"}
    assert n.enabled and n.watchdog == 0.001
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.send("READY=1")


def test_journal_logging_when_journal_stream_is_stderr(mount_factory, tmp_path):
    log = tmp_path / "storagefs-mnt.log"  # where the Mount sends stderr
    log.touch()
    st = os.stat(log)
    m = mount_factory(env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    os.mkdir(m.vol("j.raw"))
    subprocess.run(["bash", "-c", f"echo nosuch > {m.pool('default')}/control"],
                   capture_output=True)
    lines = [ln for ln in m.log().splitlines() if not ln.startswith("===")]
    ours = [ln for ln in lines if ln.startswith("<")]
    assert any(ln.startswith("<7>pyfuse3: ") for ln in ours), lines  # debug
    assert any(ln.startswith("<5>storagefs.core: pool default: refused") for ln in ours), lines
    # journald adds the time: no time stamp of our own
    assert not any(ln[:4].isdigit() and ln[4] == "-" for ln in ours)


def test_a_stderr_that_is_not_the_journal_keeps_plain_lines(mount_factory):
    m = mount_factory(env={**os.environ, "JOURNAL_STREAM": "1:1"})
    subprocess.run(["bash", "-c", f"echo nosuch > {m.pool('default')}/control"],
                   capture_output=True)
    assert not [ln for ln in m.log().splitlines() if ln.startswith("<")]
    refused = [ln for ln in m.log().splitlines() if "pool default: refused" in ln]
    assert refused and refused[0][:4].isdigit(), m.log()  # with its own time stamp


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path):
    unit = UNIT.read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    target = tmp_path / "storagefs.service"
    if not os.access("/usr/local/bin/storagefs", os.X_OK):  # not installed here:
        storagefs = shutil.which("storagefs") or str(Path(os.sys.executable).parent /
                                                      "storagefs")
        unit = unit.replace("/usr/local/bin/storagefs", storagefs)
    target.write_text(unit)
    res = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "storagefs.service" not in res.stderr, res.stderr
