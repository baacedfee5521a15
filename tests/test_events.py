"""MNT/events on a real mount, with real readers: ``timeout 5 cat``, ``tail -f``,
bash's ``while read``, Python's selectors (epoll) and select(); a slow reader that
loses events without holding anyone up; volumes made outside storagefs; loop devices."""

from __future__ import annotations

import errno
import os
import re
import select
import selectors
import signal
import subprocess
import threading
import time

import pytest
from events_reader import Event, EventReader
from loopdev import LoopDevice, host, skip_reason
from mount_helpers import command, define_pool, is_mounted, run, write, write_errno
from test_devices_tree import drop_partitions

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
                  r"(pool|volume|secret|device|storagefs) \S+ [a-z-]+( .*)?$")
SECRET = "5d1c2a9e-3b4f-4e6a-8c7d-1e2f3a4b5c6d"


def mine(events: list[Event], prefix: str = "") -> list[tuple[str, str, str]]:
    """The (kind, name, event) of pool and volume events whose name starts so
    (devices of other engineers' tests come and go meanwhile)."""
    return [e.key for e in events
            if e.kind in ("pool", "volume", "secret") and e.name.startswith(prefix)]


def test_timeout_cat_sees_a_script_define_start_create_destroy(mounted, tmp_path):
    m = mounted
    with EventReader(m.mnt, ["timeout", "8", "cat", str(m.mnt / "events")]) as r:
        r.opened()
        run(["bash", "-euc", f"""
            cd {m.mnt}
            mkdir pools/ev
            cat > pools/ev/config.xml <<'EOF'
<pool type='dir'><name>ev</name><target><path>{tmp_path}/ev</path></target></pool>
EOF
            echo build > pools/ev/control
            echo start > pools/ev/control
            mkdir pools/ev/volumes/a.qcow2
            echo 'resize 2G' > pools/ev/volumes/a.qcow2/control
            echo 'clone b.raw --format raw' > pools/ev/volumes/a.qcow2/control
            echo 'snapshot s1' > pools/ev/volumes/a.qcow2/control
            echo 'revert s1' > pools/ev/volumes/a.qcow2/control
            echo wipe > pools/ev/volumes/b.raw/control
            rmdir pools/ev/volumes/b.raw pools/ev/volumes/a.qcow2
            echo refresh > pools/ev/control
            echo stop > pools/ev/control
            echo delete > pools/ev/control
            rmdir pools/ev
        """])
        r.wait_for("pool", "ev", "undefined")
        # a refused command is not an event: nothing changed
        code, _ = write_errno(m.pool("default") / "control", "nosuch\n")
        assert code == errno.EINVAL
        assert r.proc.wait(timeout=15) == 124  # timeout ended cat, not storagefs
        r.collect(1)
    for line in r.lines:
        assert LINE.match(line.rstrip("\n")), line
    assert mine(r.events(), "ev") == [
        ("pool", "ev", "defined"), ("pool", "ev", "built"), ("pool", "ev", "started"),
        ("volume", "ev/a.qcow2", "created"), ("volume", "ev/a.qcow2", "resized"),
        ("volume", "ev/a.qcow2", "cloned"), ("volume", "ev/b.raw", "created"),
        ("volume", "ev/a.qcow2", "snapshot-created"), ("volume", "ev/a.qcow2", "reverted"),
        ("volume", "ev/b.raw", "wiped"), ("volume", "ev/b.raw", "destroyed"),
        ("volume", "ev/a.qcow2", "destroyed"), ("pool", "ev", "refreshed"),
        ("pool", "ev", "stopped"), ("pool", "ev", "deleted"), ("pool", "ev", "undefined"),
    ]
    ev = {e.key: e for e in r.events()}
    assert "capacity=2147483648" in ev[("volume", "ev/a.qcow2", "resized")].detail
    assert "to=ev/b.raw" in ev[("volume", "ev/a.qcow2", "cloned")].detail
    assert "type=dir" in ev[("pool", "ev", "defined")].detail
    assert mine(r.events(), "default") == []  # the refused command


def test_volume_made_by_another_program_appears_and_vanishes(mounted, tmp_path):
    m = mounted
    target = tmp_path / "outside"
    define_pool(m, "out", target)
    with EventReader(m.mnt) as r:
        r.opened()
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(target / "made.qcow2"), "64M"])
        r.wait_for("volume", "out/made.qcow2", "appeared")
        # a file moved in whole is probed whole
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "moved.qcow2"), "64M"])
        os.rename(tmp_path / "moved.qcow2", target / "moved.qcow2")
        e = r.wait_for("volume", "out/moved.qcow2", "appeared")
        assert "format=qcow2" in e.detail
        os.unlink(target / "made.qcow2")
        r.wait_for("volume", "out/made.qcow2", "vanished")
        assert mine(r.events()) == [("volume", "out/made.qcow2", "appeared"),
                                    ("volume", "out/moved.qcow2", "appeared"),
                                    ("volume", "out/made.qcow2", "vanished")]


def test_secrets_define_value_undefine(mounted):
    s = mounted.mnt / "secrets" / SECRET
    with EventReader(mounted.mnt) as r:
        r.opened()
        os.mkdir(s)
        write(s / "config.xml", f"<secret ephemeral='no' private='yes'><uuid>{SECRET}</uuid>"
              "<usage type='ceph'><name>client.x</name></usage></secret>\n")
        write(s / "value", "not-in-any-event-4242\n")
        os.rmdir(s)
        r.wait_for("secret", SECRET, "undefined")
    assert mine(r.events()) == [("secret", SECRET, "defined"),
                                ("secret", SECRET, "value-changed"),
                                ("secret", SECRET, "undefined")]
    assert "usage=ceph" in r.events()[1].detail
    assert "4242" not in "".join(r.lines)


@pytest.mark.skipif(skip_reason("parted") is not None, reason=str(skip_reason("parted")))
def test_loop_device_attached_shows_its_partitions_added(mounted, tmp_path):
    """A loop device's node exists before it is attached (the kernel keeps
    /dev/loopN): attaching it is a ``changed`` (its size); its partitions (partx -a:
    this kernel does not scan loop devices itself) are new devices, ``added``, and
    ``removed`` when it is detached."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    run(["parted", "-s", str(image), "mklabel", "gpt", "mkpart", "a", "1MiB", "32MiB",
         "mkpart", "b", "32MiB", "63MiB"])
    loop = LoopDevice(image)
    with EventReader(mounted.mnt) as r:
        r.opened()
        try:
            path = host(["losetup", "-f", "--show", str(image)]).stdout.strip()
            loop.path = path
            assert loop.ours()
            add_partitions(loop)
            added = wait_device(r, lambda e: e.event == "added" and
                                (e.detail + " ").startswith(f"devnode={path}p1 "))
            wait_device(r, lambda e: e.event == "changed" and
                        (e.detail + " ").startswith(f"devnode={path} size=67108864 "))
            drop_partitions(path)
        finally:
            loop.detach()
        # the detail is empty: the device is gone
        wait_device(r, lambda e: e.event == "removed" and e.name == added.name)


def add_partitions(loop: LoopDevice) -> None:
    """partx -a, retried while a probe of the new device holds it (EBUSY)."""
    deadline = time.monotonic() + 10
    while True:
        res = host(["partx", "-a", loop.path], check=False)
        if res.returncode == 0 or len(loop.partitions()) == 2:
            return
        assert time.monotonic() < deadline, res.stderr
        time.sleep(0.2)


def wait_device(r: EventReader, match, timeout: float = 20) -> Event:
    """The first device event that ``match`` accepts (other tests' loop devices come
    and go meanwhile, so the lines are told apart by their device node)."""
    deadline = time.monotonic() + timeout
    while True:
        for e in r.events():
            if e.kind == "device" and match(e):
                return e
        if not r._take(deadline - time.monotonic()):
            raise AssertionError("no such device event; got:\n" + "".join(r.lines))


def test_tail_f_and_while_read_follow(mounted):
    m = mounted
    tail = EventReader(m.mnt, ["tail", "-f", str(m.mnt / "events")])
    loop = EventReader(m.mnt, ["bash", "-c", f'while IFS= read -r line; do echo "$line"; '
                                              f'done < {m.mnt}/events'])
    try:
        tail.opened()
        loop.opened()
        for i in range(3):
            os.mkdir(m.vol(f"t{i}.raw"))
        for r in (tail, loop):
            r.wait_for("volume", "default/t2.raw", "created")
            assert mine(r.events()) == [("volume", f"default/t{i}.raw", "created")
                                        for i in range(3)]
            for line in r.lines:  # whole lines, never split or repeated
                assert LINE.match(line.rstrip("\n")), line
    finally:
        tail.close()
        loop.close()


def read_until(fd: int, wait, needle: str, timeout: float = 10) -> str:
    """Wait with ``wait(seconds)`` (a selector's select, or select.select) and read
    until a line has ``needle``; device lines of other tests may come first."""
    deadline = time.monotonic() + timeout
    got = ""
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {timeout} s; got {got!r}"
        if wait(left):
            got += os.read(fd, 65536).decode()
    return got


def only_devices(text: str) -> bool:
    return all(line.split()[1] == "device" for line in text.splitlines())


def test_selectors_epoll_and_select_wake_at_an_event(mounted):
    m = mounted
    fd = os.open(m.mnt / "events", os.O_RDONLY)
    try:
        sel = selectors.DefaultSelector()  # epoll
        sel.register(fd, selectors.EVENT_READ)
        assert sel.select(5), "the opened line is there at once"
        assert b" storagefs events opened " in os.read(fd, 65536)
        t0 = time.monotonic()
        if sel.select(0.5):  # nothing of ours happened: not readable (or a device)
            assert only_devices(os.read(fd, 65536).decode())
        else:
            assert time.monotonic() - t0 >= 0.4
        threading.Timer(0.3, os.mkdir, [m.vol("sel.raw")]).start()
        t0 = time.monotonic()
        read_until(fd, sel.select, " volume default/sel.raw created ")
        assert time.monotonic() - t0 < 5
        sel.close()
        threading.Timer(0.3, os.rmdir, [m.vol("sel.raw")]).start()
        read_until(fd, lambda t: select.select([fd], [], [], t)[0] == [fd],
                   " volume default/sel.raw destroyed")
        os.set_blocking(fd, False)  # asyncio's way: read until EAGAIN
        with pytest.raises(BlockingIOError):
            while True:
                assert only_devices(os.read(fd, 65536).decode())
        os.mkdir(m.vol("nb.raw"))
        read_until(fd, lambda t: select.select([fd], [], [], t)[0] == [fd],
                   " volume default/nb.raw created ")
    finally:
        os.close(fd)


def test_each_open_has_its_own_stream_from_its_open(mounted):
    m = mounted
    with EventReader(m.mnt) as first:
        first.opened()
        os.mkdir(m.vol("one.raw"))
        first.wait_for("volume", "default/one.raw", "created")
        with EventReader(m.mnt) as second:
            second.opened()
            os.mkdir(m.vol("two.raw"))
            second.wait_for("volume", "default/two.raw", "created")
            first.wait_for("volume", "default/two.raw", "created")
            assert mine(second.events()) == [("volume", "default/two.raw", "created")]
    assert mine(first.events()) == [("volume", "default/one.raw", "created"),
                                    ("volume", "default/two.raw", "created")]


def test_slow_reader_loses_events_and_holds_up_nobody(mount_factory):
    m = mount_factory(env={**os.environ, "STORAGEFS_EVENT_BUFFER": "6"})
    slow = os.open(m.mnt / "events", os.O_RDONLY)  # opened, then not read
    waiting = [EventReader(m.mnt) for _ in range(4)]  # readers blocked in read()
    try:
        for r in waiting:
            r.opened()
        t0 = time.monotonic()
        for i in range(20):
            os.mkdir(m.vol(f"v{i:02}.raw"))
        took = time.monotonic() - t0
        worst = 0.0
        for _ in range(20):  # the rest of the tree answers at once
            t = time.monotonic()
            os.stat(m.mnt / "pools" / "default" / "state")
            os.listdir(m.mnt / "pools")
            worst = max(worst, time.monotonic() - t)
        assert worst < 0.1, f"a listing took {worst:.3f} s with readers waiting"
        for r in waiting:  # each fast reader got everything, in order
            r.wait_for("volume", "default/v19.raw", "created")
            assert len(mine(r.events())) == 20
        assert took < 30
        data = b""
        while b" lost " not in data:
            chunk = os.read(slow, 65536)
            assert chunk, "end of file before the lost line"
            data += chunk
        lines = data.decode().splitlines()
        assert len(lines) == 7, lines  # opened, 5 events, then the count
        lost = re.fullmatch(r".* storagefs events lost (\d+) events", lines[-1])
        assert lost, lines
        # the first events were kept (device lines of other tests may be among them)
        kept = [ln.split()[2] for ln in lines[1:6] if ln.split()[1] == "volume"]
        assert kept == [f"default/v{i:02}.raw" for i in range(len(kept))], lines
        assert int(lost.group(1)) >= 20 - len(kept)
        # and it goes on from there
        os.mkdir(m.vol("after.raw"))
        read_until(slow, lambda t: True, " volume default/after.raw created ")
        metrics = (m.mnt / "metrics.prom").read_text()
        assert f"storagefs_events_lost_total {lost.group(1)}\n" in metrics
        assert "storagefs_event_readers 5\n" in metrics
    finally:
        os.close(slow)
        for r in waiting:
            r.close()


def test_sigterm_ends_a_waiting_cat_cleanly(mounted):
    """What systemctl stop does: the reader gets end of file and exits 0, storagefs
    unmounts and exits 0. (``storagefs unmount`` is refused with EBUSY while a
    reader has the file open, as umount is for any open file.)"""
    m = mounted
    r = EventReader(m.mnt)
    r.opened()
    res = m.unmount_cmd()
    assert res.returncode != 0 and "busy" in res.stderr.lower(), res
    assert r.proc.poll() is None
    m.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(timeout=10) == 0, r.stderr_now()
    assert m.proc.wait(timeout=15) == 0
    assert not is_mounted(m.mnt)
    r.close()
    m.start()
    assert "events" in os.listdir(m.mnt)


def test_ctrl_c_ends_a_waiting_read(mounted):
    proc = subprocess.Popen(["cat", str(mounted.mnt / "events")], stdout=subprocess.PIPE)
    assert proc.stdout.readline().split()[1:4] == [b"storagefs", b"events", b"opened"]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) != 0
    assert time.monotonic() - t0 < 5
    proc.stdout.close()
    # the stream is gone with its reader
    assert "storagefs_event_readers 0" in wait_readers(mounted.mnt, 0)


def wait_readers(mnt, n: int, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = (mnt / "metrics.prom").read_text()
        if f"storagefs_event_readers {n}\n" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_events_file_is_read_only(mounted):
    code, _ = write_errno(mounted.mnt / "events", "x\n")
    assert code in (errno.EACCES, errno.EPERM, errno.EBADF)
    st = os.stat(mounted.mnt / "events")
    assert st.st_mode & 0o222 == 0
    command(mounted.pool("default") / "control", "refresh")  # the tree is unchanged
