"""Three hosts share one rbd pool on one Ceph cluster (issue 13, "Shared pools across
hosts"): what one host makes the others list, one name made on two hosts at once, and
the cluster-wide volume lock (EBUSY naming the holder; a dead host's lock broken after
its stated time-out)."""

from __future__ import annotations

import errno
import os
import threading
import time

from mount_helpers import MiB, command, read, write_errno, xml_value
from multihost import ansible_three_hosts, three_hosts, wait_until, wipe_in_background  # noqa: F401
from server_ceph import POOL, ceph_cluster  # noqa: F401


def shared_xml(cluster, name: str = "shared") -> str:
    return (f"<pool type='rbd'>\n  <name>{name}</name>\n  <uuid>"
            "3b9c2f4e-1d5a-4c6b-8e7f-9a0b1c2d3e4f</uuid>\n  <source>\n"
            f"    <name>{POOL}</name>\n    <host name='127.0.0.1' port='{cluster.v1}'/>\n"
            "  </source>\n</pool>\n")


def vols(h, pool: str = "shared"):
    return h.pool(pool) / "volumes"


def test_what_one_host_makes_the_others_list(three_hosts, ceph_cluster):  # noqa: F811
    hosts = three_hosts()
    hosts.define("shared", shared_xml(ceph_cluster))
    for h in hosts:
        os.listdir(vols(h))  # each host's pool is being read: it is polled
    command(hosts.a.pool("shared") / "control", "create seen 12M")
    for h in (hosts.b, hosts.c):
        took = wait_until(lambda h=h: "seen" in os.listdir(vols(h)), 2.5)
        assert took <= 2.5
    # allocation (rbd du, fast-diff) is a live figure each host measures in the
    # background: the documents agree once each host measured the new image
    docs: list[str] = []

    def agree() -> bool:
        docs[:] = [read(vols(h) / "seen" / "status.xml") for h in hosts]
        return docs[0] == docs[1] == docs[2]

    wait_until(agree, 2.5)
    assert xml_value(docs[0], "/volume/capacity") == str(12 * MiB)
    os.rmdir(vols(hosts.a) / "seen")
    for h in (hosts.b, hosts.c):
        wait_until(lambda h=h: "seen" not in os.listdir(vols(h)), 2.5)


def test_one_name_made_on_two_hosts_at_once(three_hosts, ceph_cluster):  # noqa: F811
    hosts = three_hosts()
    hosts.define("shared", shared_xml(ceph_cluster))
    results: dict[str, int | None] = {}
    seen_sizes: set[str] = set()
    go = threading.Barrier(2)

    def make(h, size: str) -> None:
        go.wait()
        results[h.host_id] = write_errno(h.pool("shared") / "control",
                                         f"create race {size}\n")[0]

    stop = threading.Event()

    def watch() -> None:  # host c never lists a half-made volume
        while not stop.is_set():
            if "race" in os.listdir(vols(hosts.c)):
                try:
                    seen_sizes.add(read(vols(hosts.c) / "race" / "capacity").strip())
                except OSError:
                    pass
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    t = [threading.Thread(target=make, args=(hosts.a, "8M")),
         threading.Thread(target=make, args=(hosts.b, "16M"))]
    for x in t:
        x.start()
    for x in t:
        x.join(60)
    time.sleep(2.5)
    stop.set()
    w.join(10)
    codes = sorted(results.values(), key=lambda c: c or 0)
    assert codes == [None, errno.EEXIST], results
    winner = next(h for h in hosts if results.get(h.host_id) is None)
    size = read(vols(winner) / "race" / "capacity").strip()
    assert seen_sizes <= {size}
    assert ceph_cluster.rbd_json("info", f"{POOL}/race")["size"] == int(size)
    os.rmdir(vols(winner) / "race")


def test_second_host_gets_ebusy_naming_the_holder(three_hosts, ceph_cluster):  # noqa: F811
    hosts = three_hosts()
    hosts.define("shared", shared_xml(ceph_cluster))
    command(hosts.a.pool("shared") / "control", "create big 768M")
    wait_until(lambda: "big" in os.listdir(vols(hosts.b)), 3)
    t, out = wipe_in_background(vols(hosts.a) / "big")
    try:
        wait_until(lambda: "wipe" in read(vols(hosts.a) / "big" / "progress"), 10, 0.01)
        code, _ = write_errno(vols(hosts.b) / "big" / "control", "resize 1G\n")
        assert code == errno.EBUSY
        line = read(vols(hosts.b) / "big" / "error")
        assert "host-a" in line and "wipe" in line
    finally:
        t.join(120)
    assert out.get("errno") is None
    command(vols(hosts.b) / "big" / "control", "resize 800M")  # free again
    os.rmdir(vols(hosts.b) / "big")


def test_lock_left_by_a_dead_host_is_broken(three_hosts, ceph_cluster):  # noqa: F811
    stale = 6
    hosts = three_hosts(env=dict(os.environ, STORAGEFS_LOCK_STALE=str(stale)))
    hosts.define("shared", shared_xml(ceph_cluster))
    command(hosts.a.pool("shared") / "control", "create orphan 768M")
    wait_until(lambda: "orphan" in os.listdir(vols(hosts.b)), 3)
    t, _ = wipe_in_background(vols(hosts.a) / "orphan")
    wait_until(lambda: "wipe" in read(vols(hosts.a) / "orphan" / "progress"), 10, 0.01)
    hosts.a.kill()  # SIGKILL while it holds the lock
    killed_at = time.monotonic()
    t.join(10)
    code, _ = write_errno(vols(hosts.b) / "orphan" / "control", "resize 1G\n")
    assert code == errno.EBUSY
    assert "host-a" in read(vols(hosts.b) / "orphan" / "error")
    time.sleep(max(0.0, stale + 1.5 - (time.monotonic() - killed_at)))
    command(vols(hosts.b) / "orphan" / "control", "resize 1G")
    assert "breaking the lock host host-a left" in hosts.b.log()
    assert ceph_cluster.rbd_json("info", f"{POOL}/orphan")["size"] == 1024 * MiB
    hosts.a.recover()
    os.rmdir(vols(hosts.b) / "orphan")


def test_one_ansible_play_for_three_hosts(three_hosts, ceph_cluster, tmp_path):  # noqa: F811
    """Configuration management writes the same config.xml on every host: one play,
    three hosts (three mountpoints); the second run changes nothing."""
    hosts = three_hosts()
    first, second = ansible_three_hosts(hosts, shared_xml(ceph_cluster), tmp_path)
    print(f"ansible three hosts (rbd): first run changed={first}, second {second}")
    assert all(c > 0 for c in first.values()), first
    assert second == {"host-a": 0, "host-b": 0, "host-c": 0}
