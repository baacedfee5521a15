"""What an iSCSI pool's ``<source>`` names — the portal, the target IQN, the initiator,
CHAP — with libvirt's rules, shared by the ``iscsi`` (kernel initiator) and
``iscsi-direct`` (libiscsi) backends; and the pool documents of discovered targets
(``find_sources``)."""

from __future__ import annotations

import errno
import hashlib
import re
import socket
from dataclasses import dataclass

from ..errors import InvalidArgument, StorageError
from ..xml.pool import PoolDef, PoolSource, SourceDevice, SourceHost, format_pool

DEFAULT_PORT = 3260
#: open-iscsi's initiator name, used for discovery when the query names none
INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
#: characters kept in a pool name made from a target IQN (others become '_')
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:+-]")
#: the longest pool name made from an IQN (a longer one ends in a hash of the whole)
NAME_LIMIT = 200


def portal(host: str, port: int | None = None) -> str:
    """``HOST:PORT`` as libvirt writes it (an IPv6 address in brackets; 3260 by default)."""
    port = port or DEFAULT_PORT
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_portal(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` -> (host, port or None);
    EINVAL for anything else."""
    text = text.strip()
    host, port, has_port = text, "", False
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidArgument(f"portal '{text}': missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise InvalidArgument(f"portal '{text}': expected ':PORT' after ']'")
        port, has_port = rest[1:], bool(rest)
    elif text.count(":") == 1:
        host, port = text.split(":")
        has_port = True
    if not host or any(c.isspace() or c in "/@?#[]" or ord(c) < 32 for c in host):
        raise InvalidArgument(f"portal '{text}': expected HOST[:PORT]")
    if not has_port:
        return host, None
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"portal '{text}': the port must be 1-65535")
    return host, int(port)


def url(host: str, port: int | None, target: str, lun: int) -> str:
    """The ``iscsi://`` URL qemu opens a LUN with (no credentials in it)."""
    return f"iscsi://{portal(host, port)}/{target}/{lun}"


@dataclass(frozen=True)
class IscsiSource:
    """The parts of a pool definition an iSCSI backend uses, checked as libvirt checks
    them at start (here already at define: a pool that can never start is refused)."""

    host: str
    port: int | None
    target: str
    initiator: str | None

    @property
    def portal(self) -> str:
        return portal(self.host, self.port)

    @classmethod
    def of(cls, definition: PoolDef) -> IscsiSource:
        src = definition.source
        if len(src.hosts) != 1:
            raise InvalidArgument("Expected exactly 1 host for the storage pool")
        if len(src.devices) != 1 or not src.devices[0].path:
            raise InvalidArgument("missing source device: the target's IQN in "
                                  "<device path='IQN'/>")
        target = src.devices[0].path
        if any(c.isspace() or ord(c) < 32 for c in target) or len(target) > 223:
            raise InvalidArgument(f"target name '{target}' is not an iSCSI name (no blanks, "
                                  "at most 223 bytes)")
        if src.auth is not None and src.auth.type != "chap":
            raise InvalidArgument(f"iSCSI pools only support 'chap' auth type, not "
                                  f"'{src.auth.type}'")
        host = src.hosts[0]
        return cls(host.name, host.port, target, src.initiator_iqn)

    def key(self) -> tuple:
        """libvirt's source conflict for iSCSI pools: the same target on the same host as
        the same initiator is the same storage (whichever initiator stack reaches it)."""
        return ("iscsi", self.host.lower(), self.port or DEFAULT_PORT, self.target,
                self.initiator or "")

    def lun_path(self, lun: int) -> str:
        """libvirt's key and target path of an iscsi-direct LUN (and udev's by-path name
        of a kernel one, without the IP lookup)."""
        return f"ip-{self.portal}-iscsi-{self.target}-lun-{lun}"


def source_key(definition: PoolDef) -> tuple | None:
    try:
        return IscsiSource.of(definition).key()
    except StorageError:
        return None


def default_initiator() -> str:
    """The host's initiator name (open-iscsi's file), else one made from the host name."""
    try:
        with open(INITIATOR_FILE) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key.strip() == "InitiatorName" and value.strip():
                    return value.strip()
    except OSError:
        pass
    host = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()) or "localhost"
    return f"iqn.2026-01.org.storagefs:{host}"


def pool_name_for(target: str) -> str:
    """A valid pool name for a target: its IQN with characters outside
    ``A-Za-z0-9 . _ : + -`` made '_', no leading dot, at most NAME_LIMIT bytes (a
    longer one keeps its head and ends in '_' and a hash of the whole IQN)."""
    name = _NAME_CHARS.sub("_", target).lstrip(".") or "target"
    if len(name) > NAME_LIMIT:
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        name = f"{name[:NAME_LIMIT - 17]}_{digest}"
    return name


def source_documents(pool_type: str, host: str, port: int | None, targets: list[str],
                     initiator: str | None, target_path: str | None = None) -> list[str]:
    """One pool document per target, ready to be written to pools/NAME/config.xml (as
    ``virsh find-storage-pool-sources`` lists the sources, with a name and a target)."""
    docs, seen, names = [], set(), set()
    for target in targets:
        if not target or target in seen:
            continue
        seen.add(target)
        name = pool_name_for(target)
        if name in names:  # two IQNs that differ only in characters made '_'
            name = f"{name[:NAME_LIMIT - 17]}_{hashlib.sha256(target.encode()).hexdigest()[:16]}"
        names.add(name)
        defn = PoolDef(type=pool_type, name=name,
                       source=PoolSource(hosts=[SourceHost(host, port)],
                                         devices=[SourceDevice(target)],
                                         initiator_iqn=initiator),
                       target_path=target_path)
        docs.append(format_pool(defn, extensions=False))
    return docs


def check_query(query: str | None) -> tuple[str, int | None]:
    if not query:
        raise StorageError("hostname must be specified for iscsi sources", errno.EINVAL)
    return parse_portal(query)
