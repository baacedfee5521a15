"""open-iscsi's ``iscsiadm`` for ``iscsi`` pools, as libvirt calls it (src/util/viriscsi.c):
the command lines, the parsing of what it prints, its node records, and the SCSI
devices a session's host has in sysfs (libvirt's virStorageBackendSCSIFindLUs).

Pure functions where they can be (argv builders, parsers, the record editor): they are
tested without a kernel initiator, which this project's test machine lacks.

One deviation from libvirt, on purpose: libvirt sets a CHAP password with ``iscsiadm
--op update --name node.session.auth.password --value PASSWORD``, on a command line any
user can read in /proc. Here the password is written into the node record itself
(root-only, where iscsid reads it), with the same atomic rename iscsiadm uses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from dataclasses import dataclass

from ..errors import InvalidArgument, StorageError

ISCSIADM = "iscsiadm"
NODES_DIR = "/etc/iscsi/nodes"
SYSFS = "/sys"

#: iscsiadm's exit statuses (iscsiadm(8) EXIT STATUS) -> errno
EXIT_ERRNOS = {
    2: errno.ENOENT,       # ISCSI_ERR_SESS_NOT_FOUND
    4: errno.EIO,          # ISCSI_ERR_TRANS: connection failure
    7: errno.EINVAL,       # ISCSI_ERR_INVAL
    8: errno.ETIMEDOUT,    # ISCSI_ERR_TRANS_TIMEOUT
    11: errno.ETIMEDOUT,   # ISCSI_ERR_PDU_TIMEOUT
    12: errno.ENOTSUP,     # ISCSI_ERR_TRANS_NOT_FOUND: no iscsi_tcp in this kernel
    13: errno.EACCES,      # ISCSI_ERR_ACCESS
    15: errno.EEXIST,      # ISCSI_ERR_SESS_EXISTS
    19: errno.EIO,         # ISCSI_ERR_FATAL_LOGIN
    20: errno.EIO,         # ISCSI_ERR_ISCSID_NOTCONN: iscsid does not run
    21: errno.ENOENT,      # ISCSI_ERR_NO_OBJS_FOUND
    24: errno.EACCES,      # ISCSI_ERR_LOGIN_AUTH_FAILED
    28: errno.EBUSY,       # ISCSI_ERR_BUSY
    29: errno.EAGAIN,      # ISCSI_ERR_AGAIN
}
EXIT_NO_OBJECTS = 21
EXIT_SESSION_EXISTS = 15

# ---- command lines (libvirt's, argument for argument) -------------------------------


def portal_arg(portal: str) -> str:
    """libvirt's ``--portal`` value: ``HOST:PORT,1`` (target portal group tag 1)."""
    return f"{portal},1"


def session_argv() -> list[str]:
    return [ISCSIADM, "--mode", "session"]


def rescan_argv(session: str) -> list[str]:
    return [ISCSIADM, "--mode", "session", "-r", session, "-R"]


def discovery_argv(portal: str, iface: str | None = None, persist: bool = False) -> list[str]:
    argv = [ISCSIADM, "--mode", "discovery", "--type", "sendtargets", "--portal",
            portal_arg(portal)]
    if not persist:
        argv += ["--op", "nonpersistent"]
    if iface:
        argv += ["--interface", iface]
    return argv


def node_new_argv(portal: str, target: str) -> list[str]:
    return [ISCSIADM, "--mode", "node", "--portal", portal_arg(portal), "--targetname",
            target, "--op", "new"]


def node_delete_argv(portal: str, target: str) -> list[str]:
    return [ISCSIADM, "--mode", "node", "--portal", portal_arg(portal), "--targetname",
            target, "--op", "delete"]


def node_update_argv(portal: str, target: str, name: str, value: str) -> list[str]:
    if name.endswith(".password") or name.endswith(".password_in"):
        raise InvalidArgument("a password is never passed on a command line")
    return [ISCSIADM, "--mode", "node", "--portal", portal_arg(portal), "--target", target,
            "--op", "update", "--name", name, "--value", value]


def connection_argv(portal: str, target: str, action: str, iface: str | None) -> list[str]:
    """``--login`` or ``--logout`` of one node, through ``iface`` when the pool names an
    initiator IQN."""
    if action not in ("--login", "--logout"):
        raise ValueError(action)
    argv = [ISCSIADM, "--mode", "node", "--portal", portal_arg(portal), "--targetname",
            target]
    if iface:
        argv += ["--interface", iface]
    return [*argv, action]


def iface_list_argv() -> list[str]:
    return [ISCSIADM, "--mode", "iface"]


def iface_new_argv(iface: str) -> list[str]:
    return [ISCSIADM, "--mode", "iface", "--interface", iface, "--op", "new"]


def iface_initiator_argv(iface: str, initiator: str) -> list[str]:
    return [ISCSIADM, "--mode", "iface", "--interface", iface, "--op", "update", "--name",
            "iface.initiatorname", "--value", initiator]


# ---- what it prints -------------------------------------------------------------------

#: ``tcp: [3] 192.168.122.170:3260,1 iqn.2004-04.com.example:demo (non-flash)``; the
#: README shows it without the colon
_SESSION = re.compile(r"^\s*(\w+):?\s+\[(\S+)\]\s+(\S+?),(\d+)\s+(\S+)")
#: ``192.168.122.185:3260,1 iqn.2004-04.com:fedora14:iscsi.demo0.bf6d84``
_TARGET = re.compile(r"^\s*(\S+?),(\d+)\s+(\S+)\s*$")


@dataclass(frozen=True)
class SessionLine:
    transport: str
    sid: str
    portal: str
    tpgt: int
    target: str


def parse_sessions(text: str) -> list[SessionLine]:
    """``iscsiadm --mode session``: one line per session."""
    out = []
    for line in text.splitlines():
        m = _SESSION.match(line)
        if m:
            out.append(SessionLine(m.group(1), m.group(2), m.group(3), int(m.group(4)),
                                   m.group(5)))
    return out


def session_of(text: str, target: str) -> str | None:
    """The session id of ``target`` (libvirt: the first session whose target matches)."""
    for s in parse_sessions(text):
        if s.target == target:
            return s.sid
    return None


def parse_targets(text: str) -> list[tuple[str, int, str]]:
    """``iscsiadm --mode discovery --type sendtargets``: (portal, tpgt, target) per line."""
    out = []
    for line in text.splitlines():
        m = _TARGET.match(line)
        if m and not line.lstrip().startswith("iscsiadm:"):
            out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out


def parse_ifaces(text: str) -> dict[str, str]:
    """``iscsiadm --mode iface``: iface name -> its initiator name ('' when <empty>).

    Lines are ``NAME transport,hwaddress,ipaddress,net_ifacename,initiatorname``; the
    initiator name is what follows the last comma (libvirt's virStorageBackendIQNFound)."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.strip().partition(" ")
        if not name or "," not in rest:
            continue
        iqn = rest.rsplit(",", 1)[1].strip()
        out[name] = "" if iqn == "<empty>" else iqn
    return out


def iface_for(text: str, initiator: str) -> str | None:
    for name, iqn in parse_ifaces(text).items():
        if iqn == initiator:
            return name
    return None


def tool_errno(returncode: int) -> int:
    return EXIT_ERRNOS.get(returncode, errno.EIO)


def reason(stderr: str, stdout: str = "") -> str:
    """Why iscsiadm failed: its last own line (``iscsiadm: ...`` says what it gave up
    on; lines before it are steps, and systemd's or libkmod's complaints are noise)."""
    own = [ln.strip()[len("iscsiadm:"):].strip() for ln in (stderr + "\n" + stdout).splitlines()
           if ln.strip().startswith("iscsiadm:")]
    if own:
        return own[-1]
    for line in stderr.splitlines() + stdout.splitlines():
        if line.strip():
            return line.strip()
    return ""


# ---- node records ------------------------------------------------------------------------


def record_paths(target: str, host: str, port: int, nodes_dir: str = NODES_DIR) -> list[str]:
    """The node record files of ``target`` at ``host:port`` (any portal group, any iface):
    ``NODES/TARGET/HOST,PORT,TPGT/IFACE`` (open-iscsi 2.x) or ``NODES/TARGET/HOST,PORT,TPGT``
    (older, a file)."""
    if "/" in target or target in (".", ".."):
        raise InvalidArgument(f"target name '{target}' cannot name a node record")
    base = os.path.join(nodes_dir, target)
    prefix = f"{host.strip('[]')},{port},"
    found = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        if entry.is_dir(follow_symlinks=False):
            found += sorted(os.path.join(entry.path, f) for f in os.listdir(entry.path)
                            if not f.startswith("."))
        elif entry.is_file(follow_symlinks=False):
            found.append(entry.path)
    return found


def check_record_value(name: str, value: str) -> None:
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in value) or \
            value != value.strip():
        raise InvalidArgument(f"{name}: a value in a node record cannot hold control "
                              "characters or begin or end with blanks")


def set_record_values(text: str, values: dict[str, str]) -> str:
    """The record ``text`` (``name = value`` lines) with ``values`` set: a line that is
    there is replaced in place, a missing one is added before ``# END RECORD``."""
    for name, value in values.items():
        check_record_value(name, value)
    lines = text.rstrip("\n").split("\n")
    left = dict(values)
    out = []
    for line in lines:
        name = line.split("=", 1)[0].strip() if "=" in line else None
        if name in left:
            out.append(f"{name} = {left.pop(name)}")
            continue
        if line.strip() == "# END RECORD":
            out += [f"{k} = {v}" for k, v in left.items()]
            left = {}
        out.append(line)
    out += [f"{k} = {v}" for k, v in left.items()]
    return "\n".join(out) + "\n"


def write_record(path: str, values: dict[str, str]) -> None:
    """Set ``values`` in the record at ``path``: a 0600 temp file beside it, fsync'ed and
    renamed over it (a reader sees the old or the new record, never half of one)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = set_record_values(text, values)
        fd, tmp = tempfile.mkstemp(prefix=".storagefs-", dir=os.path.dirname(path))
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StorageError(f"cannot update the node record {path}: {exc.strerror}",
                           exc.errno or errno.EIO) from None


# ---- the SCSI devices of a session (sysfs) ---------------------------------------------------


@dataclass(frozen=True)
class ScsiUnit:
    """A logical unit the kernel made for a session: ``unit:BUS:TARGET:LUN`` in libvirt."""

    host: int
    bus: int
    target: int
    lun: int
    #: peripheral device type (sysfs ``type``: 0 disk, 5 CD/DVD)
    device_type: int
    #: the block device's kernel name (sdb), or None while it has none yet
    block: str | None

    @property
    def name(self) -> str:
        return f"unit:{self.bus}:{self.target}:{self.lun}"


def session_host(sid: str, sysfs: str = SYSFS) -> int:
    """The SCSI host number of session ``sid`` (the ``targetH:B:T`` entry below its
    device, as libvirt's virStorageBackendISCSIGetHostNumber finds it)."""
    where = os.path.join(sysfs, "class", "iscsi_session", f"session{sid}", "device")
    try:
        names = sorted(os.listdir(where))
    except OSError as exc:
        raise StorageError(f"cannot read {where}: {exc.strerror}", exc.errno or errno.EIO) \
            from None
    for name in names:
        m = re.fullmatch(r"target(\d+):\d+:\d+", name)
        if m:
            return int(m.group(1))
    raise StorageError(f"Failed to get host number from '{where}'", errno.EIO)


def scsi_units(host: int, sysfs: str = SYSFS) -> list[ScsiUnit]:
    """The disks and CD/DVD units of SCSI host ``host`` (libvirt lists those two types)."""
    base = os.path.join(sysfs, "bus", "scsi", "devices")
    try:
        names = os.listdir(base)
    except OSError:
        return []
    units = []
    for name in names:
        m = re.fullmatch(r"(\d+):(\d+):(\d+):(\d+)", name)
        if m is None or int(m.group(1)) != host:
            continue
        where = os.path.join(base, name)
        try:
            with open(os.path.join(where, "type")) as f:
                kind = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if kind not in (0, 5):
            continue
        units.append(ScsiUnit(host, int(m.group(2)), int(m.group(3)), int(m.group(4)), kind,
                              _block_name(where)))
    return sorted(units, key=lambda u: (u.bus, u.target, u.lun))


def _block_name(where: str) -> str | None:
    """``block/sdb`` (or the old ``block:sdb`` link) below the unit's sysfs directory."""
    with contextlib.suppress(OSError):
        names = os.listdir(os.path.join(where, "block"))
        if names:
            return sorted(names)[0]
    with contextlib.suppress(OSError):
        for name in os.listdir(where):
            if name.startswith("block:"):
                return name.split(":", 1)[1]
    return None


def scsi_id_key(text: str) -> str:
    """The first line scsi_id prints (the unit's serial), or ''."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def stable_path(target_dir: str, devnode: str) -> str:
    """A link in the pool's target directory (/dev/disk/by-path) that resolves to
    ``devnode``, else ``devnode`` itself (libvirt's virStorageBackendStablePath)."""
    real = os.path.realpath(devnode)
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(target_dir)):
            path = os.path.join(target_dir, name)
            if os.path.realpath(path) == real:
                return path
    return devnode
