"""What a pool's ``<source>`` and a sources/ query may say (SPEC "Names are safe").

Every source field becomes a host tool's operand somewhere (mount, showmount, rbd,
gluster, iscsiadm, zpool, lvm ...): a value that starts with ``-`` would be read as
an option, so it is refused (EINVAL) at define and at the query write, before any tool
runs. A host must be a host name or an IP address, a port 1-65535, and a source
directory or a dataset name has no ``..`` component. These are storagefs's rules on
top of libvirt's parser (:mod:`storagefs.xml.poolsource`), checked for every pool type.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .xml.pool import PoolDef

#: one label of a host name (RFC 1123; '_' too, as resolvers take it)
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MAX_HOST_BYTES = 253


def no_option(value: str, what: str) -> None:
    """EINVAL for a value a host tool would read as an option."""
    if value.startswith("-"):
        raise InvalidArgument(f"{what} '{value}' cannot start with '-'")


def no_dotdot(value: str, what: str) -> None:
    if ".." in value.split("/"):
        raise InvalidArgument(f"{what} '{value}' cannot have a '..' component")


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]")
                             else host)
    except ValueError:
        return False
    return True


def check_host(host: str, what: str = "source host") -> None:
    """A host name (labels of letters, digits, '-' and '_', no label starting or
    ending with '-') or an IPv4/IPv6 address (``[V6]`` too)."""
    no_option(host, what)
    if is_address(host):
        return
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > MAX_HOST_BYTES or \
            not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidArgument(f"{what} '{host}' is not a host name or an IP address")


def check_port(port: int | None, what: str = "source host port") -> None:
    if port is not None and not 0 < port < 65536:
        raise InvalidArgument(f"{what} {port} is not 1-65535")


def check_source(defn: PoolDef) -> None:
    """EINVAL for a source field of any pool type that a tool could misread."""
    src = defn.source
    for host in src.hosts:
        check_host(host.name)
        check_port(host.port)
    if src.name is not None:
        no_option(src.name, "source name")
        no_dotdot(src.name, "source name")
    for device in src.devices:
        no_option(device.path, "source device path")
    if src.dir is not None:
        no_option(src.dir, "source dir path")
        no_dotdot(src.dir, "source dir path")
    if src.adapter is not None:
        for field in ("name", "parent", "wwnn", "wwpn", "parent_wwnn", "parent_wwpn",
                      "parent_fabric_wwn"):
            value = getattr(src.adapter, field)
            if value:
                no_option(value, f"adapter {field}")
    if src.initiator_iqn is not None:
        no_option(src.initiator_iqn, "initiator IQN")
    if src.auth is not None:
        no_option(src.auth.username, "auth username")


def split_host_port(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 address."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise InvalidArgument(f"'{text}' is not HOST[:PORT]")
        host, port = text[:end + 1], text[end + 2:] if text[end + 1:] else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if port is None:
        return host, None
    if not port.isascii() or not port.isdigit():
        raise InvalidArgument(f"the port of '{text}' is not a number")
    check_port(int(port), "port")
    return host, int(port)


def check_query(text: str, names_host: bool) -> None:
    """A sources/ query: never an option; a host (and port) for the remote types."""
    no_option(text, "query")
    if names_host:
        host, _ = split_host_port(text)
        check_host(host, "host")
