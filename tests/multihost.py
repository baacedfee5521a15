"""Three hosts on one machine: three storagefs mounts, each with its own state
directory, mountpoint and ``--host-id``, sharing the storage of one engine (a Ceph
cluster, a Gluster volume). Used by tests/test_multihost_*.py (one per engine).

    hosts = three_hosts(mount_factory_like, tmp_path, env=...)
    for h in hosts: h.define(name, xml)          # the same config.xml on every host
    hosts.a.vol("pool", "v1") ...

Each host is a :class:`mount_helpers.Mount` under ``tmp_path/host-X`` (its own
``state``), started with ``--host-id host-X``; teardown checks each like the ``mounted``
fixture does (clean unmount, no Traceback in its log).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mount_helpers import ACTIVE_MOUNTS, Mount, command, read, write, write_errno

NAMES = ("a", "b", "c")


class Host(Mount):
    """One simulated host: a Mount with its own base directory and host id."""

    def __init__(self, base: Path, host_id: str, env: dict | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        super().__init__(base, env=env, name="mnt")
        self.host_id = host_id
        self.state_dir.mkdir(exist_ok=True)

    def start(self, *extra: str) -> None:  # type: ignore[override]
        super().start("--host-id", self.host_id, *extra)

    def define(self, pool: str, xml: str, start: bool = True) -> Path:
        pdir = self.pool(pool)
        if not pdir.exists():
            os.mkdir(pdir)
        write(pdir / "config.xml", xml)
        if start:
            command(pdir / "control", "start")
        return pdir


class Hosts(list):
    @property
    def a(self) -> Host:
        return self[0]

    @property
    def b(self) -> Host:
        return self[1]

    @property
    def c(self) -> Host:
        return self[2]

    def define(self, pool: str, xml: str) -> None:
        for h in self:
            h.define(pool, xml)


def wait_until(pred: Callable[[], bool], timeout: float = 2.0, step: float = 0.05) -> float:
    """Seconds until pred() held; raises AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not true within {timeout:g} s")
        time.sleep(step)


def _finish(h: Host) -> list[str]:
    problems = []
    h.disarm_watchdog()
    try:
        if h.alive():
            h.stop()
        elif h.proc is not None and not h.killed:
            problems.append(f"{h.host_id}: storagefs exited with {h.proc.returncode}")
            h.cleanup()
        else:
            h.cleanup()
    except AssertionError as exc:
        problems.append(f"{h.host_id}: {str(exc).splitlines()[0]}")
        h.cleanup()
    if "Traceback" in h.log():
        problems.append(f"{h.host_id}: 'Traceback' in {h.log_path}")
    return problems


@pytest.fixture
def three_hosts(tmp_path) -> Iterator[Callable[..., Hosts]]:
    """``three_hosts(env=None)``: hosts a, b, c started; stopped and checked after."""
    made: list[Host] = []

    def make(env: dict | None = None) -> Hosts:
        hosts = Hosts()
        for n in NAMES:
            h = Host(tmp_path / f"host-{n}", f"host-{n}", env)
            h.start()
            h.arm_watchdog(170)
            made.append(h)
            ACTIVE_MOUNTS.append(h)
            hosts.append(h)
        return hosts

    yield make
    ACTIVE_MOUNTS.clear()
    problems: list[str] = []
    for h in reversed(made):
        problems += _finish(h)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def wipe_in_background(volume_dir: Path, line: str = "wipe") -> tuple[threading.Thread, dict]:
    """``echo LINE > VOLUME/control`` in a thread; the dict gets "errno" (None: done)."""
    out: dict = {}

    def run() -> None:
        out["errno"] = write_errno(volume_dir / "control", line + "\n")[0]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


RECAP = re.compile(r"^(host-\w)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.M)


def ansible_three_hosts(hosts: Hosts, xml: str, tmp_path: Path) -> tuple[dict, dict]:
    """tests/ansible/multihost.yml (engine-neutral) run twice over the three hosts for
    a pool ``shared`` of document ``xml``: what each run changed on each host. Checks
    that it succeeds on all three and leaves one document, running, on each."""
    from test_config_mgmt import PLAYBOOK_DIR, ansible_env, ansible_playbook

    inv = tmp_path / "inventory.ini"
    inv.write_text("[fleet]\n" + "".join(
        f"{h.host_id} ansible_connection=local mnt={h.mnt}\n" for h in hosts))
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"shared_pools": [{"name": "shared", "xml": xml}]}))

    def play() -> dict[str, int]:
        res = subprocess.run([ansible_playbook(), "-i", str(inv), "-e", f"@{extra}",
                              str(PLAYBOOK_DIR / "multihost.yml")], capture_output=True,
                             text=True, timeout=300, env=ansible_env(tmp_path),
                             cwd=PLAYBOOK_DIR)
        assert res.returncode == 0, res.stdout + res.stderr
        rows = {m[0]: (int(m[2]), int(m[4])) for m in RECAP.findall(res.stdout)}
        assert sorted(rows) == ["host-a", "host-b", "host-c"], res.stdout
        assert all(failed == 0 for _, failed in rows.values())
        return {h: changed for h, (changed, _) in rows.items()}

    first = play()
    second = play()
    assert len({read(h.pool("shared") / "config.xml") for h in hosts}) == 1
    assert all(read(h.pool("shared") / "state") == "running\n" for h in hosts)
    return first, second
