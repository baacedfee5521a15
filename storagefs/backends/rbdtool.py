"""The ``rbd`` and ``rados`` command-line tools of ceph-common, as the rbd backend calls
them: the connection arguments of a pool (monitors, cephx user and key), the key passed
by a 0600 keyring that exists only while the tool runs, Ceph's own reason and errno
from its stderr, and parsers of its ``--format json`` output.

Why the CLIs and not python3-rbd: the bindings exist only for Debian's /usr/bin/python3
(no wheel on PyPI), so a venv of another Python cannot import them; and a librados call
on a cluster that stopped answering sleeps in a thread nobody can interrupt, while a
tool is killed with its process group at its time limit (hostcmd). Every call costs a
process start (~45 ms), which only listing could notice: one ``rbd ls -l`` lists every
image with its size, parent and snapshots.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from .. import hostcmd, secrettmp
from ..errors import StorageError

#: seconds of one quick call (list, info, create, lock): the pool's operation time limit
QUICK_TIMEOUT = 30.0
#: seconds of one long call (deep copy, write of zeros, qemu-img convert)
LONG_TIMEOUT = 3600.0
#: "rbd: create error: (17) File exists" -> 17
_ERRNO = re.compile(r"\((\d+)\)\s*([^()\n]*)")
#: stderr lines that are noise, not the reason (librados log lines with a timestamp)
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def ceph_reason(stderr: str, returncode: int = 1) -> tuple[str, int]:
    """Ceph's reason and errno from a tool's stderr: the last line the tool itself
    printed ("rbd: error opening image x: (2) No such file or directory"), not the
    librados log lines. (reason, errno); the errno is the "(N)" of that line, else the
    exit status (rbd exits with the errno: 39 for an image with snapshots), else EIO."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    own = [ln for ln in lines if not _LOG_LINE.match(ln)]
    pick = [ln for ln in own if _ERRNO.search(ln)] or own or lines
    if not pick:
        if returncode < 0:
            return f"the tool was killed by signal {-returncode} and said nothing", errno.EIO
        return f"the tool exited with status {returncode} and said nothing", errno.EIO
    line = pick[-1]
    m = _ERRNO.search(line)
    code = int(m.group(1)) if m else (returncode if 1 < returncode < 126 else errno.EIO)
    if code == errno.EPERM and "auth" in stderr.lower():
        code = errno.EACCES
    if code in (errno.ETIMEDOUT, errno.EINTR, 110):
        code = errno.ETIMEDOUT
    return line[:300], code if 0 < code < 4096 else errno.EIO


@dataclass
class Connection:
    """How to reach one Ceph pool: monitors, cephx user (None: auth none), key."""

    pool: str
    mons: list[str] = field(default_factory=list)
    user: str | None = None
    #: the key as Ceph prints it (base64 text); only in memory and in a 0600 file
    key: str | None = None

    def mon_host(self) -> str:
        return ",".join(self.mons)

    def args(self, keyring: str | None, timeout: float) -> list[str]:
        """Arguments every call gets: no ceph.conf of the host (the pool's document says
        it all), librados timeouts below the tool's limit (so Ceph says why), no log
        lines on stderr, no admin socket."""
        secs = str(max(1, int(timeout) - 1))
        argv = ["--conf", "/dev/null", "--no-mon-config", "--err-to-stderr=false",
                "--log-to-stderr=false", "--admin-socket=", "--log-file=",
                "--client-mount-timeout", secs, "--rados-mon-op-timeout", secs,
                "--rados-osd-op-timeout", secs]
        if self.mons:
            argv += ["-m", self.mon_host()]
        if self.user is None:
            argv += ["--auth-client-required", "none", "--keyring", "/dev/null"]
        else:
            argv += ["--id", self.user, "--keyring", keyring or "/dev/null"]
        return argv

    def qemu_url(self, image: str, keyring: str | None) -> str:
        """qemu's ``rbd:POOL/IMAGE:opt=value`` filename (':' in values escaped)."""
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace(":", "\\:").replace("@", "\\@")

        parts = [f"rbd:{esc(self.pool)}/{esc(image)}", "conf=/dev/null"]
        if self.mons:
            parts.append(f"mon_host={esc(self.mon_host().replace(',', ';'))}")
        if self.user is None:
            parts.append("auth_supported=none")
        else:
            parts += [f"id={esc(self.user)}", f"keyring={esc(keyring or '/dev/null')}"]
        return ":".join(parts)


def key_text(value: bytes) -> str:
    """A cephx key as Ceph prints it: the value of a ceph secret is either that text
    (``ceph auth get-key`` written to value) or its decoded bytes (libvirt's
    ``secret-set-value``): both give the same key."""
    text = value.strip()
    try:
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) >= 12 and text.isascii():
            return text.decode()
    except (binascii.Error, ValueError):
        pass
    return base64.b64encode(value).decode()


@contextlib.asynccontextmanager
async def keyring(conn: Connection) -> AsyncIterator[str | None]:
    """A keyring file with the user's key, 0600 in a 0700 directory of the state
    directory's run/secrets-tmp (never /tmp: secrettmp.py), that exists only while the
    block runs (None without cephx)."""
    if conn.user is None or conn.key is None:
        yield None
        return
    text = f"[client.{conn.user}]\n\tkey = {conn.key}\n".encode()
    async with secrettmp.secret_file(text, name="keyring",
                                     what="cannot pass the cephx key to the tool") as path:
        yield path


async def call(conn: Connection, tool: str, argv: Sequence[str], *, what: str,
               timeout: float = QUICK_TIMEOUT, stdin: bytes | None = None,
               check: bool = True) -> hostcmd.Result:
    """Run ``rbd``/``rados`` against the pool; a failure raises StorageError with
    ``what`` and Ceph's reason and errno; a tool killed at its limit, ETIMEDOUT."""
    limit = hostcmd.limit(timeout)
    async with keyring(conn) as kr:
        try:
            res = await hostcmd.run([tool, *conn.args(kr, limit), *argv], timeout=limit,
                                    check=False, stdin=stdin)
        except StorageError as exc:
            raise StorageError(f"{what}: {exc.reason}", exc.errno if "not installed" in
                               exc.reason else errno.ETIMEDOUT) from None
    if check and res.returncode != 0:
        reason, code = ceph_reason(res.stderr, res.returncode)
        raise StorageError(f"{what}: {reason or f'{tool} exit {res.returncode}'}", code)
    return res


async def call_json(conn: Connection, tool: str, argv: Sequence[str], *, what: str,
                    timeout: float = QUICK_TIMEOUT) -> object:
    res = await call(conn, tool, [*argv, "--format", "json"], what=what, timeout=timeout)
    return parse_json(res.stdout, what)


def parse_json(text: str, what: str) -> object:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        raise StorageError(f"{what}: the tool printed no JSON", errno.EIO) from None


# ---- parsers of --format json -----------------------------------------------------
@dataclass
class ImageRow:
    """One image of ``rbd ls -l``, its snapshots gathered from the rows after it."""

    name: str
    id: str = ""
    size: int = 0
    parent: str | None = None
    snapshots: list[dict] = field(default_factory=list)
    lock: str | None = None
    #: RBD_FEATURE_* bits where the listing tells them (rbd_lister.py), else None
    features: int | None = None

    @property
    def fast_diff(self) -> bool:
        return self.features is not None and bool(self.features & FAST_DIFF)


#: RBD_FEATURE_FAST_DIFF: rbd du reads the object map instead of every object
FAST_DIFF = 1 << 4


def _int(value: object) -> int:
    try:
        return max(0, int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def parse_ls_long(data: object) -> list[ImageRow]:
    """``rbd ls -l --format json``: a list of rows, one per image and one per snapshot
    (a row with "snapshot"). Rows that are not dicts or lack a name are skipped."""
    images: dict[str, ImageRow] = {}
    if not isinstance(data, list):
        return []
    for row in data:
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            continue
        name = row["image"]
        img = images.setdefault(name, ImageRow(name))
        if "snapshot" in row:
            img.snapshots.append({"name": str(row.get("snapshot")),
                                  "id": str(row.get("snapshot_id", "")),
                                  "size": _int(row.get("size")),
                                  "protected": str(row.get("protected", "false")) == "true"})
            continue
        img.id = str(row.get("id", ""))
        img.size = _int(row.get("size"))
        parent = row.get("parent")
        if isinstance(parent, dict) and parent.get("image"):
            img.parent = f"{parent.get('pool', '')}/{parent['image']}@{parent.get('snapshot')}"
        if isinstance(row.get("features"), int):
            img.features = row["features"]
        lock = row.get("lock_type")
        img.lock = str(lock) if lock else None
    return list(images.values())


def parse_du(data: object) -> dict[str, int]:
    """``rbd du --format json``: image -> used bytes (snapshot rows left out)."""
    out: dict[str, int] = {}
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return out
    for row in data["images"]:
        if isinstance(row, dict) and isinstance(row.get("name"), str) and \
                "snapshot" not in row:
            out[row["name"]] = _int(row.get("used_size"))
    return out


@dataclass(frozen=True)
class LockRow:
    cookie: str
    locker: str
    address: str = ""


def parse_locks(data: object) -> list[LockRow]:
    """``rbd lock ls --format json``: a list of {id, locker, address} (Ceph 16), or
    a dict of id -> {locker, address} (older releases)."""
    rows = []
    if isinstance(data, dict):
        data = [dict(v, id=k) for k, v in data.items() if isinstance(v, dict)]
    if not isinstance(data, list):
        return rows
    for row in data:
        if isinstance(row, dict) and isinstance(row.get("id"), str) and \
                isinstance(row.get("locker"), str):
            rows.append(LockRow(row["id"], row["locker"], str(row.get("address", ""))))
    return rows


def parse_df(data: object, pool: str) -> tuple[int, int, int] | None:
    """``rados -p POOL df --format json``: (capacity, allocation, available) as libvirt
    reports an rbd pool: the cluster's space (KiB in the report), the pool's bytes."""
    if not isinstance(data, dict):
        return None
    for row in data.get("pools", []) or []:
        if isinstance(row, dict) and row.get("name") == pool:
            used = _int(row.get("size_bytes"))
            return (_int(data.get("total_space")) * 1024, used,
                    _int(data.get("total_avail")) * 1024)
    return None
