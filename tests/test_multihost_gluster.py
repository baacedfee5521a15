"""Three hosts share one gluster pool on one Gluster volume (issue 13, "Shared pools
across hosts", GlusterFS half): what one host makes the others list, one name made on two
hosts at once, the volume lock (a POSIX lock on ``.NAME.storagefs-lock`` held by
GlusterFS's features/locks on the brick: EBUSY naming the holder; released when its
holder dies, since the lock goes with the holder's open file).

Each host's ``gluster`` pool mounts the volume with a FUSE client of its own
(``STATE/run/gluster/POOL``), so locks, link(2) and listings go through GlusterFS as they
would between machines. (A ``netfs`` pool of format glusterfs would do the same with a
mount of its own at its <target>; gluster pools need no target per host.)"""

from __future__ import annotations

import errno
import os
import threading
import time

from mount_helpers import MiB, command, read, write_errno, xml_value
from multihost import ansible_three_hosts, three_hosts, wait_until, wipe_in_background  # noqa: F401
from server_gluster import gluster_server, gluster_volume  # noqa: F401


def shared_xml(volume, name: str = "shared") -> str:
    return (f"<pool type='gluster'>\n  <name>{name}</name>\n  <uuid>"
            "5d1e7a3c-2b4f-4e6a-9c8d-0f1e2d3c4b5a</uuid>\n  <source>\n"
            f"    <host name='{volume.server.host}'/>\n    <dir path='/'/>\n"
            f"    <name>{volume.name}</name>\n  </source>\n</pool>\n")


def vols(h, pool: str = "shared"):
    return h.pool(pool) / "volumes"


def test_what_one_host_makes_the_others_list(gluster_volume, three_hosts):
    hosts = three_hosts()
    hosts.define("shared", shared_xml(gluster_volume))
    for h in hosts:
        os.listdir(vols(h))  # each host's pool is being read: it is polled
    command(hosts.a.pool("shared") / "control", "create seen 12M")
    took = {}
    for h in (hosts.b, hosts.c):
        took[h.host_id] = wait_until(lambda h=h: "seen" in os.listdir(vols(h)), 2.5)
    print(f"gluster: a volume made on host-a listed after {took}")
    docs = [read(vols(h) / "seen" / "status.xml") for h in hosts]
    assert docs[0] == docs[1] == docs[2]
    assert xml_value(docs[0], "/volume/capacity") == str(12 * MiB)
    assert (gluster_volume.brick / "seen").stat().st_size == 12 * MiB
    os.rmdir(vols(hosts.a) / "seen")
    gone = {}
    for h in (hosts.b, hosts.c):
        gone[h.host_id] = wait_until(lambda h=h: "seen" not in os.listdir(vols(h)), 2.5)
    print(f"gluster: its removal on host-a seen after {gone}")
    assert not (gluster_volume.brick / "seen").exists()


ROUNDS = 12


def test_one_name_made_on_two_hosts_at_once(gluster_volume, three_hosts):
    hosts = three_hosts()
    hosts.define("shared", shared_xml(gluster_volume))
    seen: dict[str, set[str]] = {}
    stop = threading.Event()

    def watch() -> None:  # host c never lists a half-made volume
        while not stop.is_set():
            for name in os.listdir(vols(hosts.c)):
                try:
                    cap = read(vols(hosts.c) / name / "capacity").strip()
                except OSError:
                    continue
                seen.setdefault(name, set()).add(cap)
            time.sleep(0.01)

    w = threading.Thread(target=watch)
    w.start()
    winners = {"host-a": 0, "host-b": 0}
    try:
        for r in range(ROUNDS):
            name = f"race{r}"
            results: dict[str, int | None] = {}
            go = threading.Barrier(2)

            def make(h, size: str, name=name, results=results, go=go) -> None:
                go.wait()
                results[h.host_id] = write_errno(h.pool("shared") / "control",
                                                 f"create {name} {size}\n")[0]

            t = [threading.Thread(target=make, args=(hosts.a, "8M")),
                 threading.Thread(target=make, args=(hosts.b, "16M"))]
            for x in t:
                x.start()
            for x in t:
                x.join(60)
            codes = sorted(results.values(), key=lambda c: c or 0)
            assert codes == [None, errno.EEXIST], (name, results)
            winner = next(h for h in hosts if results.get(h.host_id) is None)
            loser = hosts.b if winner is hosts.a else hosts.a
            winners[winner.host_id] += 1
            # the host told EEXIST lists the winner's volume at once (not at its next poll)
            wait_until(lambda name=name, loser=loser: name in os.listdir(vols(loser)), 0.5,
                       0.02)
            size = 8 * MiB if winner is hosts.a else 16 * MiB
            assert (gluster_volume.brick / name).stat().st_size == size
            for h in hosts:  # the loser too lists it at its next ls, within the poll
                wait_until(lambda h=h, name=name: name in os.listdir(vols(h)), 2.5)
            caps = {h.host_id: read(vols(h) / name / "capacity").strip() for h in hosts}
            assert set(caps.values()) == {str(size)}, (name, winner.host_id, caps)
    finally:
        stop.set()
        w.join(10)
    print(f"gluster: {ROUNDS} rounds of one name made on two hosts at once, won {winners}")
    for r in range(ROUNDS):
        name = f"race{r}"
        size = (gluster_volume.brick / name).stat().st_size
        assert seen.get(name, {str(size)}) <= {str(size)}, (name, seen.get(name))
    # nothing half-made, nothing left over: only the winners' files (and gluster's own)
    left = sorted(n for n in os.listdir(gluster_volume.brick) if not n.startswith(".glusterfs"))
    assert left == sorted(f"race{r}" for r in range(ROUNDS)), left
    for r in range(ROUNDS):
        os.rmdir(vols(hosts.a) / f"race{r}")


WIPE_SIZE = "256M"  # a random wipe: seconds of writes through GlusterFS


def test_second_host_gets_ebusy_naming_the_holder(gluster_volume, three_hosts):
    hosts = three_hosts()
    hosts.define("shared", shared_xml(gluster_volume))
    command(hosts.a.pool("shared") / "control", f"create big {WIPE_SIZE}")
    for h in (hosts.b, hosts.c):
        wait_until(lambda h=h: "big" in os.listdir(vols(h)), 3)
    t, out = wipe_in_background(vols(hosts.a) / "big", "wipe random")
    try:
        wait_until(lambda: "wipe" in read(vols(hosts.a) / "big" / "progress"), 10, 0.01)
        for h in (hosts.b, hosts.c):
            code, _ = write_errno(vols(h) / "big" / "control", "resize 1G\n")
            assert code == errno.EBUSY, h.host_id
            line = read(vols(h) / "big" / "error")
            assert "host 'host-a'" in line and "wipe" in line, line
    finally:
        t.join(150)
    assert out.get("errno") is None
    command(vols(hosts.b) / "big" / "control", "resize 300M")  # free again
    assert (gluster_volume.brick / "big").stat().st_size == 300 * MiB
    assert not [n for n in os.listdir(gluster_volume.brick) if n.endswith(".storagefs-lock")]
    os.rmdir(vols(hosts.b) / "big")


def _lock_goes_with_a_dead_host(gluster_volume, hosts, kill, what: str) -> None:
    """Host A wipes a volume (holding its lock), host B is refused (EBUSY); ``kill``
    kills A's stack; B's resize then succeeds (the brick dropped A's lock: gluster has no
    stale time-out) and the volume is B's size."""
    hosts.define("shared", shared_xml(gluster_volume))
    command(hosts.a.pool("shared") / "control", f"create orphan {WIPE_SIZE}")
    wait_until(lambda: "orphan" in os.listdir(vols(hosts.b)), 3)
    t, _ = wipe_in_background(vols(hosts.a) / "orphan", "wipe random")
    wait_until(lambda: "wipe" in read(vols(hosts.a) / "orphan" / "progress"), 10, 0.01)
    code, _ = write_errno(vols(hosts.b) / "orphan" / "control", "resize 1G\n")
    assert code == errno.EBUSY
    kill()
    killed_at = time.monotonic()
    while True:
        code, _ = write_errno(vols(hosts.b) / "orphan" / "control", "resize 1G\n")
        if code is None:
            break
        assert code == errno.EBUSY, code
        assert time.monotonic() - killed_at < 60, "the dead host's lock is still held"
        time.sleep(0.05)
    print(f"gluster: lock of {what} released after {time.monotonic() - killed_at:.2f} s")
    t.join(10)
    assert (gluster_volume.brick / "orphan").stat().st_size == 1024 * MiB
    hosts.a.recover()
    os.rmdir(vols(hosts.b) / "orphan")


def test_lock_of_a_killed_host_goes_with_it(gluster_volume, three_hosts):
    """SIGKILL of host A's storagefs in the middle of a wipe: the kernel closes its files,
    the FUSE client unlocks and releases them, the brick drops the lock: host B's resize
    succeeds (no stale time-out as for rbd)."""
    hosts = three_hosts()
    _lock_goes_with_a_dead_host(gluster_volume, hosts, hosts.a.kill, "a SIGKILLed host")


def _client_pid(h) -> int:
    """The pid of the host's private GlusterFS client (the FUSE mount of its pool)."""
    where = str(h.state_dir / "run" / "gluster" / "shared")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"glusterfs" and where.encode() in argv:
            return int(pid)
    raise AssertionError(f"no glusterfs client for {where}")


def test_lock_of_a_host_whose_client_died_goes_with_it(gluster_volume, three_hosts):
    """The whole storage stack of host A dies (storagefs and its GlusterFS client, both
    SIGKILLed): the brick drops the lock as the client's connection closes."""
    import signal

    hosts = three_hosts()

    def kill() -> None:
        os.kill(_client_pid(hosts.a), signal.SIGKILL)
        hosts.a.kill()

    _lock_goes_with_a_dead_host(gluster_volume, hosts, kill,
                                "a host whose client was SIGKILLed")


def test_one_ansible_play_for_three_hosts(gluster_volume, three_hosts, tmp_path):
    """tests/ansible/multihost.yml is engine-neutral: the same play for a gluster pool on
    three hosts; the second run changes nothing."""
    hosts = three_hosts()
    first, second = ansible_three_hosts(hosts, shared_xml(gluster_volume), tmp_path)
    print(f"ansible three hosts (gluster): first run changed={first}, second {second}")
    assert all(c > 0 for c in first.values()), first
    assert second == {"host-a": 0, "host-b": 0, "host-c": 0}
    command(hosts.a.pool("shared") / "control", "create fleet 4M")
    for h in (hosts.b, hosts.c):
        wait_until(lambda h=h: "fleet" in os.listdir(vols(h)), 2.5)
    os.rmdir(vols(hosts.c) / "fleet")
