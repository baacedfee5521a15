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
