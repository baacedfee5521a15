"""Facts libvirt gathers outside udev: PCI config space, ethtool features,
network link state, DMI, plus the content probe (blkid) that udev's database
would give us if udevd ran.

Everything here reads the real system and returns None / empty when the fact
is unavailable: nothing is guessed.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import re
import socket
import struct
import subprocess

log = logging.getLogger(__name__)

__all__ = [
    "blkid_probe",
    "dmi_info",
    "net_features",
    "net_link",
    "pci_config_caps",
    "pci_iommu_group",
    "pci_sriov",
    "read_text",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_text(path: str) -> str | None:
    """A sysfs attribute as text without its trailing newline, None when
    absent, unreadable or empty (libvirt's ``udevGetStringSysfsAttr``)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except OSError:
        return None
    text = _CONTROL.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
    return text or None


# --- PCI -----------------------------------------------------------------

_PCI_STATUS = 0x06
_PCI_STATUS_CAP_LIST = 0x10
_PCI_CAPABILITY_LIST = 0x34
_PCI_HEADER_TYPE = 0x0E
_PCI_CONF_HEADER_LEN = 0x40
_PCI_CAP_ID_EXP = 0x10
_PCI_EXP_FLAGS = 0x02
_PCI_EXP_LNKCAP = 0x0C
_PCI_EXP_LNKSTA = 0x12
_PCI_EXP_TYPE_ROOT_INT_EP = 0x9
_PCI_EXP_TYPE_ROOT_EC = 0xA
#: virPCIELinkSpeed: index is the encoded speed
_PCIE_SPEEDS = ("", "2.5", "5", "8", "16", "32", "64")
_HEADER_TYPES = {1: "pci-bridge", 2: "cardbus-bridge"}


def _find_pcie_cap(cfg: bytes) -> int | None:
    """Offset of the PCI Express capability; 0 when the list has none; None
    when the list cannot be walked (libvirt's FindCapabilityOffset failing)."""
    if len(cfg) < _PCI_CONF_HEADER_LEN:
        return None
    status = int.from_bytes(cfg[_PCI_STATUS:_PCI_STATUS + 2], "little")
    if not status & _PCI_STATUS_CAP_LIST:
        return None
    pos = cfg[_PCI_CAPABILITY_LIST]
    seen = set()
    while _PCI_CONF_HEADER_LEN <= pos < len(cfg) - 1 and pos != 0xFF and pos not in seen:
        seen.add(pos)
        if cfg[pos] == _PCI_CAP_ID_EXP:
            return pos
        pos = cfg[pos + 1]
    # libvirt falls through to its error label here as well
    return None


def pci_config_caps(sys_path: str) -> tuple[str | None, dict | None]:
    """(header capability, pci-express info) from the config space, as
    libvirt's udevProcessPCI reads them when privileged.

    pci-express info is None (not PCIe) or ``{"cap": link|None, "sta": link|None}``
    with link = (port or None, speed string or None, width).  As libvirt: a
    device whose capability list cannot be walked counts as PCIe when its
    config file is not 256 bytes long.
    """
    path = os.path.join(sys_path, "config")
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            cfg = fh.read(4096)
    except OSError:
        return None, None
    header = _HEADER_TYPES.get(cfg[_PCI_HEADER_TYPE] & 0x7F) if len(cfg) > 0x0E else None
    pos = _find_pcie_cap(cfg)
    if pos is None:
        return header, ({"cap": None, "sta": None} if size != 256 else None)
    if pos == 0:
        return header, None
    if pos + 0x14 > len(cfg):
        return header, {"cap": None, "sta": None}
    flags = int.from_bytes(cfg[pos + _PCI_EXP_FLAGS:pos + _PCI_EXP_FLAGS + 2], "little")
    kind = (flags & 0xF0) >> 4
    if kind in (_PCI_EXP_TYPE_ROOT_INT_EP, _PCI_EXP_TYPE_ROOT_EC):
        return header, {"cap": None, "sta": None}
    lnkcap = int.from_bytes(cfg[pos + _PCI_EXP_LNKCAP:pos + _PCI_EXP_LNKCAP + 4], "little")
    lnksta = int.from_bytes(cfg[pos + _PCI_EXP_LNKSTA:pos + _PCI_EXP_LNKSTA + 2], "little")

    def speed(code: int) -> str | None:
        return (_PCIE_SPEEDS[code] or None) if code < len(_PCIE_SPEEDS) else None

    cap = (lnkcap >> 24, speed(lnkcap & 0xF), (lnkcap & 0x3F0) >> 4)
    sta = (None, speed(lnksta & 0xF), (lnksta & 0x3F0) >> 4)
    return header, {"cap": cap, "sta": sta}


def _pci_addr(link: str) -> tuple[int, int, int, int] | None:
    m = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])",
                     os.path.basename(os.path.realpath(link)))
    return tuple(int(g, 16) for g in m.groups()) if m else None  # type: ignore[return-value]


def pci_sriov(sys_path: str) -> tuple[tuple | None, list[tuple] | None, int]:
    """(physical function address or None, virtual functions or None when the
    device is no PF, their maximum count) from sysfs."""
    physfn = os.path.join(sys_path, "physfn")
    phys = _pci_addr(physfn) if os.path.islink(physfn) else None
    total = read_text(os.path.join(sys_path, "sriov_totalvfs"))
    max_vfs = int(total) if total and total.isdigit() else 0
    vfs: list[tuple] = []
    try:
        entries = [e for e in os.listdir(sys_path) if e.startswith("virtfn")]
    except OSError:
        entries = []
    for entry in sorted(entries, key=lambda e: int(e[6:]) if e[6:].isdigit() else 0):
        addr = _pci_addr(os.path.join(sys_path, entry))
        if addr:
            vfs.append(addr)
    return phys, (vfs if vfs or max_vfs else None), max_vfs


def pci_iommu_group(sys_path: str) -> tuple[int | None, list[tuple]]:
    """(IOMMU group number, addresses of the group's devices) or (None, [])."""
    link = os.path.join(sys_path, "iommu_group")
    try:
        group = int(os.path.basename(os.readlink(link)))
        members = os.listdir(os.path.join(link, "devices"))
    except (OSError, ValueError):
        return None, []
    addrs = [a for a in (_pci_addr(os.path.join(link, "devices", m)) for m in members) if a]
    return group, sorted(addrs)


# --- network ---------------------------------------------------------------

_SIOCETHTOOL = 0x8946
_ETHTOOL_VALUE_CMDS = (  # libvirt's order: it is the order of <feature> elements
    (0x14, "rx"), (0x16, "tx"), (0x18, "sg"), (0x1E, "tso"), (0x23, "gso"), (0x2B, "gro"),
)
_ETHTOOL_GFLAGS = 0x25
_ETHTOOL_FLAGS = ((1 << 15, "lro"), (1 << 8, "rxvlan"), (1 << 7, "txvlan"),
                  (1 << 27, "ntuple"), (1 << 28, "rxhash"))
_ETHTOOL_GFEATURES = 0x3A
_GFEATURES_SIZE = 2
_TX_UDP_TNL = 25
_OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


def _ethtool(sock: socket.socket, ifname: str, payload: bytearray) -> bool:
    """One SIOCETHTOOL call; ``payload`` is filled in by the kernel."""
    buf = array.array("B", payload)
    addr, _ = buf.buffer_info()
    ifreq = bytearray(struct.pack("16sP", ifname.encode()[:15], addr).ljust(40, b"\0"))
    try:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    except OSError:
        return False
    payload[:] = buf.tobytes()
    return True


def net_features(ifname: str) -> list[str]:
    """Offload features in libvirt's order (ethtool ioctls, as
    virNetDevGetFeatures).  The rdma and switchdev bits need RDMA sysfs and
    devlink netlink lookups that are not done here."""
    found: list[str] = []
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with sock:
        for cmd, feature in _ETHTOOL_VALUE_CMDS:
            value = bytearray(struct.pack("II", cmd, 0))
            if _ethtool(sock, ifname, value) and struct.unpack("II", value)[1] > 0:
                found.append(feature)
        value = bytearray(struct.pack("II", _ETHTOOL_GFLAGS, 0))
        if _ethtool(sock, ifname, value):
            flags = struct.unpack("II", value)[1]
            if flags:
                found.extend(name for bit, name in _ETHTOOL_FLAGS if flags & bit)
        gfeat = bytearray(struct.pack("II", _ETHTOOL_GFEATURES, _GFEATURES_SIZE)
                          + bytes(16 * _GFEATURES_SIZE))
        if _ethtool(sock, ifname, gfeat):
            block = _TX_UDP_TNL // 32
            active = struct.unpack_from("I", gfeat, 8 + 16 * block + 8)[0]
            if active & (1 << (_TX_UDP_TNL % 32)):
                found.append("txudptnl")
    return found


def net_link(sys_path: str) -> tuple[int | None, str | None]:
    """(speed in Mb/s, operstate) as virNetDevGetLinkInfo: the speed only
    when the link is up (drivers report nonsense otherwise); the kernel's
    ``-1`` for "unknown" reads as 4294967295, as in libvirt."""
    state = read_text(os.path.join(sys_path, "operstate"))
    if state not in _OPERSTATES:
        return None, None
    if state != "up":
        return None, state
    raw = read_text(os.path.join(sys_path, "speed"))
    try:
        speed = int(raw) & 0xFFFFFFFF if raw is not None else None
    except ValueError:
        speed = None
    return (speed or None), state


# --- system ------------------------------------------------------------------

_DMI_PATHS = ("/sys/devices/virtual/dmi/id", "/sys/class/dmi/id")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                      r"[0-9a-fA-F]{12}")


def dmi_info() -> dict[str, str | None] | None:
    """DMI strings for the ``computer`` device, None when the machine has no
    DMI (libvirt then shows an all-zero uuid and empty firmware)."""
    base = next((p for p in _DMI_PATHS if os.path.isdir(p)), None)
    if base is None:
        return None
    info = {key: read_text(os.path.join(base, attr)) for key, attr in (
        ("product", "product_name"), ("vendor", "sys_vendor"), ("version", "product_version"),
        ("serial", "product_serial"), ("uuid", "product_uuid"), ("bios_vendor", "bios_vendor"),
        ("bios_version", "bios_version"), ("bios_date", "bios_date"))}
    uuid = info.get("uuid")
    if uuid and _UUID_RE.fullmatch(uuid):
        hexa = uuid.replace("-", "").lower()
        info["uuid"] = f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"
    else:
        info["uuid"] = None
    return info


# --- content probe ---------------------------------------------------------

_BLKID = "/usr/sbin/blkid" if os.path.exists("/usr/sbin/blkid") else "/sbin/blkid"
_BLKID_TIMEOUT = 2.0


def _unescape(value: str) -> str:
    """Undo ``blkid -o export``'s shell escaping (a backslash before specials)."""
    return re.sub(r"\\(.)", r"\1", value)


def blkid_probe(devnode: str) -> dict[str, str]:
    """Low-level probe of a block device's content (``blkid -p``): TYPE, UUID,
    LABEL, PTTYPE, PART_ENTRY_* ...; {} when nothing is recognised or the
    device cannot be opened.  Read-only; bounded by a timeout and never
    waited on past it (a device stuck in I/O must not stall the index)."""
    if not os.path.exists(_BLKID):
        return {}
    try:
        proc = subprocess.Popen([_BLKID, "-p", "-o", "export", "--", devnode],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        return {}
    try:
        out, _ = proc.communicate(timeout=_BLKID_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel: leave it, the index must go on
        log.warning("blkid %s: no answer in %.0f s, content left unknown", devnode,
                    _BLKID_TIMEOUT)
        return {}
    if proc.returncode != 0:
        return {}
    result: dict[str, str] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            result[key] = _unescape(value)
    return result
