"""libiscsi (``libiscsi.so.7``) through ctypes: the user-space iSCSI initiator that
``iscsi-direct`` pools use (libvirt's storage_backend_iscsi_direct.c uses the same
library).

Why the library and not its command-line tools (iscsi-ls, iscsi-readcapacity16):

- CHAP: the tools take a password only in the URL (``iscsi://U%P@host/...``, which any
  user reads in /proc/PID/cmdline) or in ``LIBISCSI_CHAP_PASSWORD`` (in
  /proc/PID/environ, and inherited by whatever the tool starts). The library takes it
  in memory (``iscsi_set_initiator_username_pwd``); it never leaves this process.
- cost: one login serves a whole listing (REPORT LUNS, then INQUIRY and READ
  CAPACITY(16) per LUN), where the tools log in once per command.

Every call here blocks (libiscsi's ``*_sync`` functions, which poll with the
session's own time limit): callers run them in the pool's worker threads
(``PoolBackend.io``), one thread at a time per :class:`Session`. The C interface
itself (structures, prototypes) is in :mod:`.libiscsi_abi`.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import threading
from dataclasses import dataclass

from ..errors import StorageError
from .iscsi_source import DEFAULT_PORT, portal
from .libiscsi_abi import (
    ASCQ_LUN_NOT_SUPPORTED,
    BLOCK_DEVICE_TYPES,
    HEADER_DIGEST_NONE_CRC32C,
    REPORT_LUNS_FIRST,
    SENSE_DATA_PROTECTION,
    SENSE_ILLEGAL_REQUEST,
    SENSE_UNIT_ATTENTION,
    SESSION_DISCOVERY,
    SESSION_NORMAL,
    STATUS_CHECK_CONDITION,
    STATUS_GOOD,
    STATUS_TIMEOUT,
    InquiryHead,
    ReadCapacity16,
    library,
)

# ---- errors ----------------------------------------------------------------------------

#: words of a login failure (the target's Status-Class/Detail) -> errno
LOGIN_ERRNOS = (("Authentication failure", errno.EACCES),
                ("Authorization failure", errno.EACCES),
                ("Target not found", errno.ENOENT), ("Target removed", errno.ENOENT),
                ("timed out", errno.ETIMEDOUT))


def login_errno(message: str) -> int:
    for needle, code in LOGIN_ERRNOS:
        if needle.lower() in message.lower():
            return code
    return errno.EIO


def sense_errno(key: int, ascq: int) -> int:
    if key == SENSE_ILLEGAL_REQUEST and ascq == ASCQ_LUN_NOT_SUPPORTED:
        return errno.ENOENT
    if key == SENSE_DATA_PROTECTION:
        return errno.EROFS
    if key == SENSE_ILLEGAL_REQUEST:
        return errno.EINVAL
    return errno.EIO


def _reachable(host: str, port: int, timeout: float) -> OSError | None:
    """Why a TCP connection to the portal fails (libiscsi says only "can not reconnect")."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc


# ---- sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Lun:
    """One logical unit as REPORT LUNS, INQUIRY and READ CAPACITY(16) describe it."""

    lun: int
    device_type: int
    block_size: int = 0
    #: the address of the last block, as READ CAPACITY(16) returns it (-1: not asked)
    last_lba: int = -1

    @property
    def capacity(self) -> int:
        """(last LBA + 1) x block length: READ CAPACITY returns the *last* address."""
        return (self.last_lba + 1) * self.block_size if self.last_lba >= 0 else 0

    @property
    def holds_blocks(self) -> bool:
        return self.device_type in BLOCK_DEVICE_TYPES


@dataclass(frozen=True)
class Credentials:
    """CHAP: the initiator's user and password, and optionally the target's (mutual)."""

    user: str
    password: bytes
    target_user: str | None = None
    target_password: bytes | None = None


class Session:
    """One iSCSI session (a normal one to ``target``, or a discovery session), logged in
    by :meth:`open`. Used by one thread at a time; ``close`` logs out."""

    def __init__(self, host: str, port: int | None, initiator: str, target: str | None,
                 *, chap: Credentials | None = None, timeout: float = 30.0) -> None:
        self.host, self.port = host, port or DEFAULT_PORT
        self.portal = portal(host, self.port)
        self.initiator, self.target = initiator, target
        self.chap = chap
        self.timeout = max(1, int(timeout))
        self._lib = library()
        self._ctx: int | None = None
        #: held by the thread that uses the context (see abandon)
        self._busy = threading.RLock()
        self._abandoned = False

    @property
    def what(self) -> str:
        return f"iSCSI target {self.target} at {self.portal}" if self.target else \
            f"iSCSI portal {self.portal}"

    def _error(self) -> str:
        text = self._lib.iscsi_get_error(self._ctx) if self._ctx else None
        return (text or b"").decode(errors="replace").strip() or "unknown error"

    def open(self) -> Session:
        with self._busy:
            self._open()
            if self._abandoned:
                self.close(logout=False)
        return self

    def _open(self) -> None:
        lib = self._lib
        ctx = lib.iscsi_create_context(self.initiator.encode())
        if not ctx:
            raise StorageError(f"cannot create an iSCSI context for initiator "
                               f"'{self.initiator}'", errno.EIO)
        self._ctx = ctx
        try:
            lib.iscsi_set_log_level(ctx, 0)  # nothing of the login on stderr
            lib.iscsi_set_noautoreconnect(ctx, 1)  # a lost connection fails the call
            lib.iscsi_set_timeout(ctx, self.timeout)
            if self.target:
                if lib.iscsi_set_targetname(ctx, self.target.encode()) != 0:
                    raise StorageError(f"invalid target name '{self.target}': "
                                       f"{self._error()}", errno.EINVAL)
            lib.iscsi_set_session_type(ctx, SESSION_NORMAL if self.target
                                       else SESSION_DISCOVERY)
            lib.iscsi_set_header_digest(ctx, HEADER_DIGEST_NONE_CRC32C)
            if self.chap is not None:
                self._set_chap(self.chap)
            self._connect()
        except BaseException:
            self.close(logout=False)
            raise

    def _set_chap(self, chap: Credentials) -> None:
        lib = self._lib
        for value in (chap.password, chap.target_password):
            if value is not None and (b"\0" in value or len(value) > 255):
                raise StorageError("a CHAP secret must be 1-255 bytes without NUL",
                                   errno.EINVAL)
        if lib.iscsi_set_initiator_username_pwd(self._ctx, chap.user.encode(),
                                                chap.password) != 0:
            raise StorageError(f"CHAP user '{chap.user}' refused: {self._error()}",
                               errno.EINVAL)
        if chap.target_user and chap.target_password is not None and \
                lib.iscsi_set_target_username_pwd(self._ctx, chap.target_user.encode(),
                                                  chap.target_password) != 0:
            raise StorageError(f"mutual CHAP user '{chap.target_user}' refused: "
                               f"{self._error()}", errno.EINVAL)

    def _connect(self) -> None:
        lib, ctx = self._lib, self._ctx
        if lib.iscsi_connect_sync(ctx, self.portal.encode()) != 0:
            raise self._unreachable(self._error())
        if lib.iscsi_login_sync(ctx) != 0:
            message = self._error()
            code = login_errno(message)
            if code == errno.EIO and "reconnect" in message:
                raise self._unreachable(message)
            raise StorageError(f"login to {self.what} failed: {message}", code)

    def _unreachable(self, message: str) -> StorageError:
        why = _reachable(self.host, self.port, min(self.timeout, 5))
        if why is not None:
            reason = why.strerror or str(why)
            return StorageError(f"cannot connect to {self.what}: {reason}",
                                why.errno or errno.EHOSTUNREACH)
        return StorageError(f"cannot connect to {self.what}: {message}", login_errno(message))

    def close(self, logout: bool = True) -> None:
        with self._busy:
            ctx, self._ctx = self._ctx, None
            if not ctx:
                return
            if logout:
                self._lib.iscsi_logout_sync(ctx)  # best effort: the target forgets us
            self._lib.iscsi_destroy_context(ctx)

    def abandon(self) -> None:
        """Close without waiting (no logout): now if no thread uses the session, else
        by the thread that does, when its command returns (a command hung on a target
        that stopped answering must not have its context freed under it)."""
        self._abandoned = True  # first: a command that returns now closes it
        if self._busy.acquire(blocking=False):
            try:
                self.close(logout=False)
            finally:
                self._busy.release()

    def _exclusive(self, fn, *args):
        """Run one command holding the session; close it after if it was abandoned."""
        with self._busy:
            if not self._ctx:
                raise StorageError(f"the session to {self.what} is closed", errno.EIO)
            try:
                return fn(*args)
            finally:
                if self._abandoned:
                    self.close(logout=False)

    def __enter__(self) -> Session:
        return self.open() if self._ctx is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- commands (each holds the session while it runs) --------------------------
    def report_luns(self) -> list[int]:
        return self._exclusive(self._report_luns)

    def inquiry(self, lun: int) -> int:
        """The LUN's peripheral device type (standard INQUIRY)."""
        return self._exclusive(self._inquiry, lun)

    def read_capacity(self, lun: int) -> tuple[int, int]:
        """READ CAPACITY(16): (last LBA, block length in bytes)."""
        return self._exclusive(self._read_capacity, lun)

    def luns(self) -> list[Lun]:
        """Every LUN the target reports, described (INQUIRY, READ CAPACITY(16))."""
        return self._exclusive(self._luns)

    def write(self, lun: int, lba: int, data: bytes, block_size: int) -> None:
        """WRITE(16) of ``data`` (a whole number of blocks) at ``lba``."""
        self._exclusive(self._write, lun, lba, data, block_size)

    def discover(self) -> list[tuple[str, list[str]]]:
        """SendTargets on a discovery session: (target IQN, its portals) per target."""
        return self._exclusive(self._discover)

    def _check(self, task, what: str, lun: int | None = None):
        """The task, or StorageError: transport failures (no task) are EIO/ETIMEDOUT,
        CHECK CONDITION the sense key's errno."""
        where = f"LUN {lun} of {self.what}" if lun is not None else self.what
        if not task:
            message = self._error()
            raise StorageError(f"{what} on {where} failed: {message}",
                               errno.ETIMEDOUT if "timed out" in message else errno.EIO)
        status = task.contents.status
        if status == STATUS_GOOD:
            return task
        key, ascq = task.contents.sense_key, task.contents.sense_ascq
        self._lib.scsi_free_scsi_task(task)
        if status == STATUS_CHECK_CONDITION:
            name = (self._lib.scsi_sense_key_str(key) or b"").decode()
            raise StorageError(f"{what} on {where}: {name} (sense key {key:#x}, "
                               f"ASC/ASCQ {ascq:#06x})", sense_errno(key, ascq))
        raise StorageError(f"{what} on {where}: SCSI status {status:#x}: {self._error()}",
                           errno.ETIMEDOUT if status == STATUS_TIMEOUT else errno.EIO)

    def _retrying(self, call, what: str, lun: int | None = None):
        """A command, sent again once after a UNIT ATTENTION (the first command after a
        login often gets "power on or reset occurred")."""
        for attempt in (1, 2):
            task = call()
            if task and attempt == 1 and task.contents.status == STATUS_CHECK_CONDITION \
                    and task.contents.sense_key == SENSE_UNIT_ATTENTION:
                self._lib.scsi_free_scsi_task(task)
                continue
            return self._check(task, what, lun)
        raise AssertionError("unreachable")  # pragma: no cover

    def _report_luns(self) -> list[int]:
        lib, ctx = self._lib, self._ctx
        size = REPORT_LUNS_FIRST
        for _ in range(3):
            task = self._retrying(lambda n=size: lib.iscsi_reportluns_sync(ctx, 0, n),
                                  "REPORT LUNS")
            try:
                full = lib.scsi_datain_getfullsize(task)
                if full > size:
                    size = full
                    continue
                data = lib.scsi_datain_unmarshall(task)
                if not data:
                    raise StorageError(f"REPORT LUNS on {self.what}: reply not understood",
                                       errno.EIO)
                count = ctypes.c_uint32.from_address(data).value
                luns = (ctypes.c_uint16 * count).from_address(data + 4)
                return sorted(set(luns))
            finally:
                lib.scsi_free_scsi_task(task)
        raise StorageError(f"REPORT LUNS on {self.what}: the list kept growing", errno.EIO)

    def _inquiry(self, lun: int) -> int:
        lib, ctx = self._lib, self._ctx
        task = self._retrying(lambda: lib.iscsi_inquiry_sync(ctx, lun, 0, 0, 64),
                              "INQUIRY", lun)
        try:
            data = lib.scsi_datain_unmarshall(task)
            if not data:
                raise StorageError(f"INQUIRY on LUN {lun} of {self.what}: reply not "
                                   "understood", errno.EIO)
            return InquiryHead.from_address(data).device_type
        finally:
            lib.scsi_free_scsi_task(task)

    def _read_capacity(self, lun: int) -> tuple[int, int]:
        lib, ctx = self._lib, self._ctx
        task = self._retrying(lambda: lib.iscsi_readcapacity16_sync(ctx, lun),
                              "READ CAPACITY(16)", lun)
        try:
            data = lib.scsi_datain_unmarshall(task)
            if not data:
                raise StorageError(f"READ CAPACITY(16) on LUN {lun} of {self.what}: reply "
                                   "not understood", errno.EIO)
            rc = ReadCapacity16.from_address(data)
            return rc.returned_lba, rc.block_length
        finally:
            lib.scsi_free_scsi_task(task)

    def _describe(self, lun: int) -> Lun:
        kind = self._inquiry(lun)
        if kind not in BLOCK_DEVICE_TYPES:
            return Lun(lun, kind)
        last, block = self._read_capacity(lun)
        return Lun(lun, kind, block, last)

    def _luns(self) -> list[Lun]:
        return [self._describe(n) for n in self._report_luns()]

    def _write(self, lun: int, lba: int, data: bytes, block_size: int) -> None:
        task = self._retrying(
            lambda: self._lib.iscsi_write16_sync(self._ctx, lun, lba, data, len(data),
                                                 block_size, 0, 0, 0, 0, 0),
            "WRITE(16)", lun)
        self._lib.scsi_free_scsi_task(task)

    def _discover(self) -> list[tuple[str, list[str]]]:
        lib = self._lib
        found = lib.iscsi_discovery_sync(self._ctx)
        if not found:
            message = (lib.iscsi_get_error(self._ctx) or b"").decode(errors="replace")
            if not message.strip():
                return []  # the portal offers no target (libiscsi returns NULL, no error)
            raise StorageError(f"SendTargets discovery on {self.what} failed: {message}",
                               login_errno(message))
        out: list[tuple[str, list[str]]] = []
        try:
            node = found
            while node:
                entry = node.contents
                portals = []
                p = entry.portals
                while p:
                    portals.append((p.contents.portal or b"").decode(errors="replace"))
                    p = p.contents.next
                out.append(((entry.target_name or b"").decode(errors="replace"), portals))
                node = entry.next
        finally:
            lib.iscsi_free_discovery_data(self._ctx, found)
        return out
