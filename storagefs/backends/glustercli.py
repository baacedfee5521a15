"""What the ``gluster`` CLI says about a host's Gluster volumes (``gluster --xml``):
used by ``gluster`` pools before they mount (does the volume exist, is it started?) and
by the discovery of ``netfs``/``gluster`` sources (libvirt's
virStorageBackendFindGlusterPoolSources runs the same command).

``gluster --remote-host=HOST`` asks HOST's glusterd (TCP 24007; only read-only
commands such as ``volume info`` are allowed that way). The CLI exits 0 even when the
command failed: the answer is in the XML's ``opRet``/``opErrno``/``opErrstr``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from lxml import etree

from .. import hostcmd
from ..errors import NotFound, StorageError

GLUSTER = "gluster"
#: what the CLI prints when it cannot reach glusterd, and what that means
CLI_ERRNOS = {"Connection failed": errno.ECONNREFUSED, "timed out": errno.ETIMEDOUT,
              "No route to host": errno.EHOSTUNREACH,
              "Name or service not known": errno.EHOSTUNREACH}
#: opErrstr texts of a volume that is not there
_MISSING = ("does not exist",)

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True)


@dataclass
class GlusterVolume:
    name: str
    id: str = ""
    #: Created, Started or Stopped
    status: str = ""
    type: str = ""
    bricks: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.status == "Started"


def _text(node, path: str) -> str:
    found = node.find(path)
    return (found.text or "").strip() if found is not None else ""


def parse_cli_output(data: bytes | str) -> etree._Element:
    """The ``<cliOutput>`` root; StorageError when it is no such document or says the
    command failed (ENOENT for a volume that does not exist)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        root = etree.fromstring(raw.strip() or b"<empty/>", _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        raise StorageError("gluster printed no XML answer", errno.EIO) from None
    if root.tag != "cliOutput":
        raise StorageError(f"gluster printed <{root.tag}>, not <cliOutput>", errno.EIO)
    ret = _text(root, "opRet")
    if ret not in ("", "0"):
        reason = _text(root, "opErrstr") or f"gluster failed (opRet {ret}, opErrno " \
            f"{_text(root, 'opErrno') or '?'})"
        if any(m in reason for m in _MISSING):
            raise NotFound(f"gluster: {reason}")
        raise StorageError(f"gluster: {reason}", errno.EIO)
    return root


def parse_volume_info(data: bytes | str) -> list[GlusterVolume]:
    """The volumes of ``gluster --xml volume info [NAME|all]``."""
    root = parse_cli_output(data)
    volumes = []
    for node in root.iterfind("volInfo/volumes/volume"):
        name = _text(node, "name")
        if not name:
            continue
        vol = GlusterVolume(name=name, id=_text(node, "id"), status=_text(node, "statusStr"),
                            type=_text(node, "typeStr"))
        for brick in node.iterfind("bricks/brick"):
            where = _text(brick, "name") or (brick.text or "").strip()
            if where:
                vol.bricks.append(where)
        for opt in node.iterfind("options/option"):
            key = _text(opt, "name")
            if key:
                vol.options[key] = _text(opt, "value")
        volumes.append(vol)
    return volumes


async def volume_info(host: str, volume: str | None = None,
                      timeout: float = 30) -> list[GlusterVolume]:
    """Ask ``host``'s glusterd about one volume (or all). StorageError when it cannot
    be reached (ECONNREFUSED ...) or the volume does not exist (ENOENT)."""
    argv = [GLUSTER, "--xml", "--log-file=/dev/null", f"--remote-host={host}", "volume",
            "info", volume or "all"]
    res = await hostcmd.run(argv, timeout=timeout, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        reason = hostcmd.first_line(res.stdout) or hostcmd.first_line(res.stderr) or \
            f"exit {res.returncode}"
        code = next((c for k, c in CLI_ERRNOS.items() if k in reason), errno.EIO)
        raise StorageError(f"gluster cannot ask host '{host}': {reason}", code)
    return parse_volume_info(res.stdout)


async def require_started(host: str, volume: str, timeout: float = 30) -> GlusterVolume:
    """The volume, if ``host`` has it and it is started (else ENOENT / EBUSY)."""
    try:
        found = await volume_info(host, volume, timeout=timeout)
    except NotFound:
        raise NotFound(f"Gluster volume '{volume}' does not exist on host '{host}'") from None
    for vol in found:
        if vol.name == volume:
            if not vol.started:
                raise StorageError(f"Gluster volume '{volume}' on host '{host}' is not "
                                   f"started (status: {vol.status or 'unknown'})", errno.EBUSY)
            return vol
    raise NotFound(f"Gluster volume '{volume}' does not exist on host '{host}'")
