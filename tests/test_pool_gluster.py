"""Issue 12, netfs and gluster: pools on a real GlusterFS volume (tests/server_gluster.py:
one glusterd on 127.0.0.1 for the session, a fresh one-brick volume per test), on a real
mount, driven with shell commands. NFS and CIFS mounts cannot run here (no kernel
clients): their mount(8) command lines are tested in test_netfs_args.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from mount_helpers import (
    answer_within,
    assert_one_error_line,
    assert_valid,
    command,
    ls_names,
    read,
    read_bytes,
    run,
    sh,
    volume_xml,
    write,
    write_errno,
    xml_value,
)
from server_gluster import gluster_mounts, gluster_server, gluster_volume  # noqa: F401

MiB = 1024**2
LIMIT = 6  # seconds: the storage time limit of mounts that watch the server go away


def netfs_xml(name: str, host: str, volume: str, target, extra: str = "") -> str:
    return (f"<pool type='netfs'>\n  <name>{name}</name>\n  <source>\n"
            f"    <host name='{host}'/>\n    <dir path='/{volume}'/>\n"
            f"    <format type='glusterfs'/>\n  </source>\n"
            f"  <target>\n    <path>{target}</path>\n  </target>\n{extra}</pool>\n")


def gluster_xml(name: str, host: str, volume: str, subdir: str = "/") -> str:
    return (f"<pool type='gluster'>\n  <name>{name}</name>\n  <source>\n"
            f"    <host name='{host}'/>\n    <dir path='{subdir}'/>\n"
            f"    <name>{volume}</name>\n  </source>\n</pool>\n")


def define(m, name: str, doc: str):
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", doc)
    return pdir


def state(pdir) -> str:
    return read(pdir / "state").strip()


def wait_for(cond, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def mount_of(path) -> tuple[str, str] | None:
    """(source, fstype) of the filesystem mounted on ``path``, from the mount table."""
    real = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            if fields[4].encode().decode("unicode_escape") == real:
                found = (fields[sep + 2], fields[sep + 1])
    return found


def client_cmdlines(target) -> list[list[str]]:
    """Command lines of the GlusterFS FUSE clients serving ``target`` (from /proc)."""
    want = str(target)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if args and os.path.basename(args[0]) == "glusterfs" and want in args:
            found.append(args)
    return found


# ---- netfs over GlusterFS ---------------------------------------------------------------
def test_netfs_glusterfs_start_volumes_status_stop(mounted, gluster_volume, tmp_path):
    vol, host = gluster_volume.name, gluster_volume.server.host
    target = tmp_path / "nfsmnt"
    p = define(mounted, "gv", netfs_xml("gv", host, vol, target))
    assert read(p / "control").split("\n")[:3] == ["start", "build", "build overwrite"]
    command(p / "control", "build")  # makes the mount point, as libvirt's netfs build
    assert target.is_dir()
    command(p / "state", "running")
    assert state(p) == "running"
    assert mount_of(target) == (f"{host}:/{vol}", "fuse.glusterfs")
    # mounted as libvirt mounts it: direct-io-mode=1 (the client's command line shows it)
    # and libvirt's default options
    opts = sh(f"grep ' {target} ' /proc/mounts").stdout
    assert "nosuid" in opts and "nodev" in opts and "noexec" in opts, opts
    clients = client_cmdlines(target)
    assert clients and all("--direct-io-mode=1" in c for c in clients), clients

    status = read_bytes(p / "status.xml")
    assert_valid(status, "storagepool")
    assert xml_value(status, "/pool/source/host/@name") == host
    assert xml_value(status, "/pool/source/dir/@path") == f"/{vol}"
    assert xml_value(status, "/pool/source/format/@type") == "glusterfs"
    vfs = os.statvfs(target)
    assert int(read(p / "capacity")) == vfs.f_frsize * vfs.f_blocks

    # volumes are files on the Gluster volume (the brick holds them)
    os.mkdir(p / "volumes" / "a.qcow2")
    write(p / "volumes" / "a.qcow2" / "config.xml", volume_xml("a.qcow2", 64 * MiB, "qcow2"))
    assert (gluster_volume.brick / "a.qcow2").is_file()
    info = run(["qemu-img", "info", "--output=json", target / "a.qcow2"]).stdout
    assert '"qcow2"' in info and str(64 * MiB) in info
    vstatus = read_bytes(p / "volumes" / "a.qcow2" / "status.xml")
    assert_valid(vstatus, "storagevol")
    assert xml_value(vstatus, "/volume/@type") == "file"
    assert xml_value(vstatus, "/volume/target/path") == str(target / "a.qcow2")
    assert xml_value(vstatus, "/volume/key") == str(target / "a.qcow2")
    # no lock or temp file is left beside the volumes
    assert sorted(os.listdir(gluster_volume.brick)) == [".glusterfs", "a.qcow2"]

    # stop is refused while a process holds a file there, naming it, before umount
    holder = subprocess.Popen(["sleep", "60"], cwd=target)
    try:
        code, call = write_errno(p / "state", "inactive\n")
        assert (code, call) == (errno.EBUSY, "write")
        line = assert_one_error_line(p)
        assert f"sleep (pid {holder.pid})" in line and str(target) in line, line
        assert state(p) == "running" and mount_of(target) is not None
    finally:
        holder.kill()
        holder.wait()
    command(p / "state", "inactive")
    assert mount_of(target) is None
    assert ls_names(p / "volumes") == set()
    command(p / "state", "running")
    assert "a.qcow2" in ls_names(p / "volumes")
    command(p / "state", "inactive")


def test_netfs_refuses_a_volume_that_does_not_exist_with_mounts_reason(
        mounted, gluster_volume, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    p = define(mounted, "bad", netfs_xml("bad", gluster_volume.server.host, "novol", target))
    code, call = write_errno(p / "state", "running\n")
    assert call == "write" and code is not None
    line = assert_one_error_line(p)
    assert "novol" in line, line
    assert state(p) == "inactive" and mount_of(target) is None


def client_pid(target) -> int:
    want = str(target)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if args and os.path.basename(args[0]) == "glusterfs" and want in args:
            return int(pid)
    raise AssertionError(f"no GlusterFS client serves {target}")


def within(fn, seconds: float = 0.1):
    return answer_within(fn, seconds)


# ---- gluster, used natively -----------------------------------------------------------
def test_gluster_pool_private_mount_urls_and_volumes(mounted, gluster_volume, tmp_path):
    vol, host = gluster_volume.name, gluster_volume.server.host
    p = define(mounted, "gp", gluster_xml("gp", host, vol))
    assert "build" not in read(p / "control").split()  # libvirt's gluster builds nothing
    command(p / "state", "running")
    private = mounted.state_dir / "run" / "gluster" / "gp"
    assert mount_of(private) == (f"{host}:/{vol}", "fuse.glusterfs")
    # no attribute cache in the client either (another host's temp file, cached empty
    # while this one listed the directory, would make its volume look 0 bytes long)
    clients = client_cmdlines(private)
    assert clients and all("--xlator-option=*md-cache.md-cache-timeout=0" in c
                           for c in clients), clients
    status = read_bytes(p / "status.xml")
    assert_valid(status, "storagepool")
    assert xml_value(status, "/pool/source/name") == vol
    assert not parse_xpath(status, "/pool/target")  # as libvirt: no target

    os.mkdir(p / "volumes" / "a.qcow2")
    write(p / "volumes" / "a.qcow2" / "config.xml", volume_xml("a.qcow2", 64 * MiB, "qcow2"))
    assert (gluster_volume.brick / "a.qcow2").is_file()
    vstatus = read_bytes(p / "volumes" / "a.qcow2" / "status.xml")
    assert_valid(vstatus, "storagevol")
    assert xml_value(vstatus, "/volume/@type") == "network"
    url = f"gluster://{host}/{vol}/a.qcow2"
    assert xml_value(vstatus, "/volume/key") == url  # libvirt: the URL is the key too
    assert xml_value(vstatus, "/volume/target/path") == url
    assert xml_value(vstatus, "/volume/target/format/@type") == "qcow2"
    command(p / "volumes" / "a.qcow2" / "control", "resize 128M")
    assert int(read(p / "volumes" / "a.qcow2" / "capacity")) == 128 * MiB
    # the URL is what a guest opens: qemu's gluster driver reads the image through it
    info = run(["qemu-img", "info", "--output=json", url], timeout=90).stdout
    assert '"virtual-size": 134217728' in info and '"qcow2"' in info, info
    # no lock or temp file is left on the volume
    assert sorted(os.listdir(gluster_volume.brick)) == [".glusterfs", "a.qcow2"]

    # files made and removed by another client appear and vanish at the next ls (≤ 2 s)
    with gluster_volume.mounted(tmp_path / "other") as other:
        run(["qemu-img", "create", "-q", "-f", "qcow2", other / "theirs.qcow2", "1G"])
        assert wait_for(lambda: "theirs.qcow2" in ls_names(p / "volumes"), 2.5)
        assert read(p / "volumes" / "theirs.qcow2" / "capacity").strip() == str(1024**3)
        os.unlink(other / "theirs.qcow2")
        assert wait_for(lambda: "theirs.qcow2" not in ls_names(p / "volumes"), 2.5)
        # and a volume deleted here is gone for them
        os.rmdir(p / "volumes" / "a.qcow2")
        assert wait_for(lambda: not (other / "a.qcow2").exists(), 2)

    command(p / "state", "inactive")
    assert mount_of(private) is None and not private.exists()
    assert ls_names(p / "volumes") == set()


def parse_xpath(data: bytes, xpath: str) -> list:
    from mount_helpers import parse
    return parse(data).xpath(xpath)


def test_gluster_refuses_a_missing_volume_and_changes_nothing(mounted, gluster_server):
    p = define(mounted, "nv", gluster_xml("nv", gluster_server.host, "novolume"))
    code, call = write_errno(p / "state", "running\n")
    assert (code, call) == (errno.ENOENT, "write")
    line = assert_one_error_line(p)
    assert "Gluster volume 'novolume' does not exist" in line, line
    assert state(p) == "inactive"
    assert not (mounted.state_dir / "run" / "gluster" / "nv").exists() or \
        mount_of(mounted.state_dir / "run" / "gluster" / "nv") is None


# ---- the server going away ------------------------------------------------------------
def limited_mount(mount_factory):
    return mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT=str(LIMIT)))


def others_answer(m, other) -> None:
    """Every call on another pool answers within 100 ms."""
    calls = {
        "ls pools/": lambda: os.listdir(m.pools),
        "cat other/status.xml": lambda: read(other / "status.xml"),
        "ls -l other/volumes/": lambda: [os.lstat(p) for p in (other / "volumes").iterdir()],
        "mkdir in other": lambda: os.mkdir(other / "volumes" / f"v{time.monotonic_ns()}"),
    }
    for name, fn in calls.items():
        answered, res = within(fn)
        assert answered, f"{name} did not answer within 100 ms"
        assert res[0] == "ok", f"{name}: {res[1]}"


@pytest.mark.log_allows("storage became inaccessible", "is dead: mounting it again",
                        "figures not refreshed")
def test_gluster_brick_killed_makes_the_pool_inaccessible_then_refresh_recovers(
        mount_factory, gluster_volume, tmp_path):
    m = limited_mount(mount_factory)
    server, vol = gluster_volume.server, gluster_volume.name
    other = m.pool("other")
    os.mkdir(other)
    write(other / "config.xml", f"<pool type='dir'><name>other</name><target><path>"
          f"{tmp_path / 'otherdir'}</path></target></pool>\n")
    command(other / "control", "build")
    command(other / "control", "start")
    p = define(m, "gp", gluster_xml("gp", server.host, vol))
    command(p / "control", "start")
    os.mkdir(p / "volumes" / "v1")
    assert "v1" in ls_names(p / "volumes")

    server.kill_brick(vol)  # the server going away
    others_answer(m, other)
    # someone reading volumes/ makes the poll notice (no command needed) ...
    began = time.monotonic()
    assert wait_for(lambda: (ls_names(p / "volumes"), state(p))[1] == "inaccessible",
                    LIMIT + 4), state(p)
    assert time.monotonic() - began < LIMIT + 4
    reason = read(p / "error")
    assert "Transport endpoint is not connected" in reason, reason
    others_answer(m, other)
    # ... and an operation that needs the storage fails within the time limit, not later
    answered, res = within(lambda: os.mkdir(p / "volumes" / "v2"), LIMIT + 2)
    assert answered and res[0] == "err", res
    answered, res = within(lambda: command(p / "control", "refresh"), LIMIT + 5)
    assert answered and res[0] == "err", res
    assert state(p) == "inaccessible"

    server.start_volume(vol, force=True)  # the server is back
    assert wait_for(lambda: _try(lambda: command(p / "control", "refresh")), 20)
    assert state(p) == "running"
    assert "v1" in ls_names(p / "volumes")
    os.mkdir(p / "volumes" / "v3")
    assert (gluster_volume.brick / "v3").is_file()
    command(p / "state", "inactive")


def _try(fn) -> bool:
    try:
        fn()
        return True
    except OSError:
        return False


@pytest.mark.log_allows("storage became inaccessible", "returned after",
                        "is dead: mounting it again", "figures not refreshed")
def test_gluster_client_stopped_holds_up_only_its_pool(mount_factory, gluster_volume,
                                                       tmp_path):
    m = limited_mount(mount_factory)
    other = m.pool("other")
    os.mkdir(other)
    write(other / "config.xml", f"<pool type='dir'><name>other</name><target><path>"
          f"{tmp_path / 'otherdir'}</path></target></pool>\n")
    command(other / "control", "build")
    command(other / "control", "start")
    p = define(m, "gp", gluster_xml("gp", gluster_volume.server.host, gluster_volume.name))
    command(p / "control", "start")
    os.mkdir(p / "volumes" / "v1")
    before = read(p / "volumes" / "v1" / "status.xml")
    pid = client_pid(m.state_dir / "run" / "gluster" / "gp")
    os.kill(pid, signal.SIGSTOP)  # the FUSE client hangs: every call on it waits
    try:
        others_answer(m, other)
        # what storagefs knows answers at once, without touching the storage
        answered, res = within(lambda: read(p / "volumes" / "v1" / "status.xml"))
        assert answered and res == ("ok", before), res
        answered, _ = within(lambda: read(p / "capacity"))
        assert answered
        # a command that needs the storage returns within the time limit ...
        began = time.monotonic()
        answered, res = within(lambda: command(p / "control", "refresh"), LIMIT + 5)
        assert answered, "refresh did not return within the time limit"
        assert res[0] == "err" and res[1].errno in (errno.EIO, errno.EBUSY), res
        assert time.monotonic() - began < LIMIT + 5
        # ... and the pool says why
        assert state(p) == "inaccessible"
        assert "not responding" in read(p / "error")
        others_answer(m, other)
        answered, res = within(lambda: os.mkdir(p / "volumes" / "v2"))
        assert answered and res[0] == "err", res
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: _try(lambda: command(p / "control", "refresh")), 20)
    assert state(p) == "running"
    assert "v1" in ls_names(p / "volumes")
    command(p / "state", "inactive")


# ---- volume locks across hosts ----------------------------------------------------------
def test_a_volume_locked_by_another_host_is_refused_naming_it(mounted, gluster_volume,
                                                              tmp_path):
    from storagefs.backends import sharedlock

    p = define(mounted, "gp", gluster_xml("gp", gluster_volume.server.host,
                                          gluster_volume.name))
    command(p / "control", "start")
    os.mkdir(p / "volumes" / "v1")
    # another host takes the volume's lock through its own client of the Gluster volume
    with gluster_volume.mounted(tmp_path / "hostB") as other:
        fd = sharedlock.acquire(str(other), "v1", "hostB", "wipe")
        try:
            code, call = write_errno(p / "volumes" / "v1" / "control", "resize 2G\n")
            assert (code, call) == (errno.EBUSY, "write")
            line = assert_one_error_line(p / "volumes" / "v1")
            assert "locked by host 'hostB' (wipe since" in line, line
            assert int(read(p / "volumes" / "v1" / "capacity")) != 2 * 1024**3
            with pytest.raises(OSError) as err:
                os.rmdir(p / "volumes" / "v1")
            assert err.value.errno == errno.EBUSY
            assert (gluster_volume.brick / "v1").is_file()
        finally:
            sharedlock.release(str(other), "v1", fd)
        command(p / "volumes" / "v1" / "control", "resize 2G")
        assert int(read(p / "volumes" / "v1" / "capacity")) == 2 * 1024**3
        # storagefs let go of its own lock: no lock file is left
        assert not (other / sharedlock.lock_name("v1")).exists()
    command(p / "state", "inactive")


# ---- discovery ---------------------------------------------------------------------------
def test_find_sources_offers_the_hosts_volumes_as_pools_that_start(mounted, gluster_volume):
    import trio

    from storagefs.backends.gluster import GlusterBackend
    from storagefs.backends.netfs import NetfsBackend

    host, vol = gluster_volume.server.host, gluster_volume.name
    docs = trio.run(GlusterBackend.find_sources, host)
    mine = [d for d in docs if f"<name>{vol}</name>" in d]
    assert len(mine) == 1, docs
    assert_valid(mine[0], "storagepool")
    netfs_docs = [d for d in trio.run(NetfsBackend.find_sources, host) if f"/{vol}'" in d]
    assert len(netfs_docs) == 1, netfs_docs
    assert_valid(netfs_docs[0], "storagepool")
    assert "<format type='glusterfs'/>" in netfs_docs[0]
    # a document found is a pool definition that works as it is
    p = define(mounted, vol, mine[0])
    command(p / "control", "start")
    assert state(p) == "running"
    command(p / "control", "stop")
    # a query that is no host name is refused
    with pytest.raises(Exception) as err:
        trio.run(GlusterBackend.find_sources, "a b/c")
    assert getattr(err.value, "errno", None) == errno.EINVAL



def test_a_host_query_in_sources_offers_its_volume_as_pools_to_cp(mounted, gluster_volume,
                                                                  tmp_path):
    """What a user does: ``echo HOST > sources/gluster/query`` (and netfs/query), the
    answer directory lists the volume as a document, ``cp`` of it into
    ``pools/NAME/config.xml`` defines the pool, and it starts as it is."""
    host, vol = gluster_volume.server.host, gluster_volume.name
    answers = {}
    for kind in ("gluster", "netfs"):
        kdir = mounted.mnt / "sources" / kind
        write(kdir / "query", host + "\n")
        assert host in read(kdir / "query").split(), kind
        answer = kdir / host
        found = [n for n in os.listdir(answer)
                 if f"/{vol}'" in read(answer / n) or f"<name>{vol}</name>" in read(answer / n)]
        assert found == [f"{vol}.xml"], (kind, os.listdir(answer))
        assert_valid(read(answer / found[0]), "storagepool")
        answers[kind] = answer / found[0]
    assert "<format type='glusterfs'/>" in read(answers["netfs"])
    for kind, path in answers.items():  # one after the other: both name the pool VOL
        doc = read_bytes(path)
        p = mounted.pool(vol)
        os.mkdir(p)
        run(["cp", str(path), str(p / "config.xml")])
        assert read_bytes(p / "config.xml") == doc
        # the volume is a pool's source now: the answer offers it no more
        assert wait_for(lambda gone=path: not gone.exists(), 3), os.listdir(path.parent)
        assert not [n for n in os.listdir(path.parent) if f"{vol}" in read(path.parent / n)]
        if kind == "netfs":
            target = xml_value(read_bytes(p / "config.xml"), "/pool/target/path")
            command(p / "control", "build")  # makes the mount point /mnt/VOL
        command(p / "control", "start")
        assert state(p) == "running", read(p / "error")
        command(p / "control", "create v.raw 1M")
        assert "v.raw" in os.listdir(p / "volumes")
        os.rmdir(p / "volumes" / "v.raw")
        command(p / "control", "stop")
        os.rmdir(p)
        if kind == "netfs":
            os.rmdir(target)
    # a query that is no host name: EINVAL, one line in sources/gluster/error
    code, _ = write_errno(mounted.mnt / "sources" / "gluster" / "query", "a b/c\n")
    assert code == errno.EINVAL
    assert read(mounted.mnt / "sources" / "gluster" / "error").count("\n") == 1


# ---- the corpus through the mount ---------------------------------------------------------
def test_corpus_netfs_and_gluster_documents_define_and_print_valid_xml(mounted):
    import corpus

    names = [n for n in corpus.names("tests/storagepoolxml2xmlin")
             if n.startswith(("pool-netfs", "pool-gluster"))]
    assert len(names) >= 10, names
    for name in names:
        data = corpus.read(f"tests/storagepoolxml2xmlin/{name}")
        pool_name = xml_value(data, "/pool/name")
        p = define(mounted, pool_name, data.decode())
        assert read_bytes(p / "config.xml") == data  # reads back byte for byte
        status = read_bytes(p / "status.xml")
        assert_valid(status, "storagepool")
        expected = f"tests/storagepoolxml2xmlout/{name}"
        if (corpus.libvirt_dir() / expected).is_file():
            want = corpus.read(expected)
            for xpath in ("/pool/@type", "/pool/source/host/@name", "/pool/source/dir/@path",
                          "/pool/source/name", "/pool/source/format/@type",
                          "/pool/source/protocol/@ver"):
                if parse_xpath(want, xpath):
                    assert xml_value(status, xpath) == xml_value(want, xpath), (name, xpath)
        assert state(p) == "inactive"
        os.rmdir(p)


# ---- two hosts on one Gluster volume ----------------------------------------------------
def test_two_hosts_share_a_gluster_volume(mount_factory, gluster_volume, tmp_path):
    a = mount_factory(extra=("--host-id", "hostA"))
    b = mount_factory(name="mntB", create_state=False, start=False)
    b.state_dir = tmp_path / "stateB"
    b.state_dir.mkdir()
    b.start("--host-id", "hostB")
    doc = gluster_xml("gp", gluster_volume.server.host, gluster_volume.name)
    pa, pb = define(a, "gp", doc), define(b, "gp", doc)
    command(pa / "control", "start")
    command(pb / "control", "start")

    # what one host makes the other lists at its next ls (polled, ≤ 2 s)
    os.mkdir(pa / "volumes" / "v1.qcow2")
    assert wait_for(lambda: "v1.qcow2" in ls_names(pb / "volumes"), 2.5)
    assert read(pb / "volumes" / "v1.qcow2" / "format").strip() == "qcow2"

    # both create one name at once: exactly one host gets it, the other EEXIST
    results: dict[str, object] = {}

    def create(name, pdir):
        results[name] = write_errno(pdir / "control", "create same.raw 64M\n")

    threads = [threading.Thread(target=create, args=(n, p)) for n, p in (("a", pa), ("b", pb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(str(r[0]) for r in results.values())
    assert codes == ["17", "None"], results
    loser = pa if results["a"][0] else pb
    assert "exists" in assert_one_error_line(loser)
    assert wait_for(lambda: "same.raw" in ls_names(pa / "volumes") and
                    "same.raw" in ls_names(pb / "volumes"), 2.5)
    assert [n for n in os.listdir(gluster_volume.brick) if n.startswith(".storagefs")] == []

    # a volume removed on one host is gone on the other
    os.rmdir(pb / "volumes" / "v1.qcow2")
    assert wait_for(lambda: "v1.qcow2" not in ls_names(pa / "volumes"), 2.5)
    command(pa / "state", "inactive")
    command(pb / "state", "inactive")


@pytest.mark.log_allows("storage became inaccessible", "refused control", "refused mkdir",
                        "is dead: mounting it again", "figures not refreshed")
def test_a_users_operation_on_a_killed_brick_makes_the_pool_inaccessible(
        mount_factory, gluster_volume):
    """The first to notice the server gone is a user's refresh or mkdir (no poll yet):
    it fails with the client's errno and reason in `error`, and the pool turns
    inaccessible with its last known volumes still listed (the server is unreachable,
    not empty); nothing is logged as an internal error."""
    m = limited_mount(mount_factory)
    server, vol = gluster_volume.server, gluster_volume.name
    p = define(m, "gk", gluster_xml("gk", server.host, vol))
    command(p / "control", "start")
    os.mkdir(p / "volumes" / "v1")
    server.kill_brick(vol)
    deadline = time.monotonic() + LIMIT + 10
    while True:  # the client notices the brick's connection close within moments
        code, _ = write_errno(p / "control", "refresh\n")
        if code is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code in (errno.ENOTCONN, errno.EIO, errno.ETIMEDOUT), code
    assert state(p) == "inaccessible"
    assert "v1" in ls_names(p / "volumes")
    line = assert_one_error_line(p)
    assert "not connected" in line or "not responding" in line or "within" in line, line
    code, _ = write_errno(p / "control", "create v2 1M\n")
    assert code is not None
    assert state(p) == "inaccessible"
    server.start_volume(vol, force=True)
    assert wait_for(lambda: _try(lambda: command(p / "control", "refresh")), 20)
    assert state(p) == "running"
    assert "v1" in ls_names(p / "volumes")
    command(p / "state", "inactive")


def test_a_backing_store_in_the_pool_is_named_relative_to_the_image(
        mount_factory, gluster_volume, tmp_path):
    """Each host reaches a gluster pool through a private mount in its own state
    directory: a backing store named by that path is written into the image relative
    to it, so the image opens on every host, and through its gluster:// URL."""
    vol, host = gluster_volume.name, gluster_volume.server.host
    m = mount_factory()
    p = define(m, "gb", gluster_xml("gb", host, vol))
    command(p / "state", "running")
    os.mkdir(p / "volumes" / "base.raw")
    private = m.state_dir / "run" / "gluster" / "gb"
    doc = (f"<volume><name>child.qcow2</name><capacity unit='M'>10</capacity><target>"
           f"<format type='qcow2'/></target><backingStore><path>{private}/base.raw</path>"
           f"<format type='raw'/></backingStore></volume>\n")
    os.mkdir(p / "volumes" / "child.qcow2")
    write(p / "volumes" / "child.qcow2" / "config.xml", doc)
    on_brick = json.loads(run(["qemu-img", "info", "--output=json", "-U", "-f", "qcow2",
                               str(gluster_volume.brick / "child.qcow2")]).stdout)
    assert on_brick["backing-filename"] == "base.raw", on_brick
    url = f"gluster://{host}/{vol}/child.qcow2"
    chain = run(["qemu-img", "info", "--output=json", "--backing-chain", url],
                timeout=90).stdout
    assert "base.raw" in chain and '"raw"' in chain, chain
    other = mount_factory(name="mnt2", create_state=False, start=False)
    other.state_dir = tmp_path / "state2"
    other.state_dir.mkdir()
    other.start("--host-id", "other")
    q = define(other, "gb", gluster_xml("gb", host, vol))
    command(q / "state", "running")
    command(q / "volumes" / "child.qcow2" / "control", "resize 20M")  # opens the chain
    assert int(read(q / "volumes" / "child.qcow2" / "capacity")) == 20 * MiB
    for pool in (q, p):
        command(pool / "state", "inactive")
