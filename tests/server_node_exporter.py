"""prometheus-node-exporter for the tests, once per session: on 127.0.0.1 at a port
of its own, with only the textfile collector, reading ``*.prom`` in a mountpoint
that the tests mount storagefs on (``NodeExporter.mnt``). Stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = "prometheus-node-exporter"


@dataclass
class NodeExporter:
    port: int
    mnt: Path
    base: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            return resp.read().decode()

    def log(self) -> str:
        return (self.base / "node-exporter.log").read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def node_exporter():
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.skip(f"{BINARY} is not installed (contrib/install.sh --test)")
    base = Path(tempfile.mkdtemp(prefix="storagefs-node-exporter-"))
    mnt = base / "mnt"
    mnt.mkdir()
    for _ in range(5):
        port = free_port()
        log = open(base / "node-exporter.log", "ab")
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={mnt}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        server = NodeExporter(port, mnt, base, proc)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                server.scrape()
                break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"{BINARY} did not start:\n{server.log()}")
    if time.monotonic() >= deadline:
        proc.terminate()
        pytest.fail(f"{BINARY} did not answer on port {port}:\n{server.log()}")
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if not mnt.is_mount():  # never remove through a mount left behind
            shutil.rmtree(base, ignore_errors=True)
