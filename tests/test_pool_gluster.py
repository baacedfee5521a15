"""Issue 12, netfs and gluster: pools on a real GlusterFS volume (tests/server_gluster.py:
one glusterd on 127.0.0.1 for the session, a fresh one-brick volume per test), on a real
mount, driven with shell commands. NFS and CIFS mounts cannot run here (no kernel
clients): their mount(8) command lines are tested in test_netfs_args.py."""

from __future__ import annotations

import errno
import os
import subprocess
import time

from mount_helpers import (
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
    """(answered, ("ok", result) | ("err", OSError)) of fn() in a helper thread."""
    box: list = []

    def work():
        try:
            box.append(("ok", fn()))
        except OSError as exc:
            box.append(("err", exc))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    return bool(box), (box[0] if box else None)


# ---- gluster, used natively -----------------------------------------------------------
def test_gluster_pool_private_mount_urls_and_volumes(mounted, gluster_volume, tmp_path):
    vol, host = gluster_volume.name, gluster_volume.server.host
    p = define(mounted, "gp", gluster_xml("gp", host, vol))
    assert "build" not in read(p / "control").split()  # libvirt's gluster builds nothing
    command(p / "state", "running")
    private = mounted.state_dir / "run" / "gluster" / "gp"
    assert mount_of(private) == (f"{host}:/{vol}", "fuse.glusterfs")
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
    assert xml_value(vstatus, "/volume/key") == f"{vol}/a.qcow2"
    url = f"gluster://{host}/{vol}/a.qcow2"
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
