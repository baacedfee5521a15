"""``iscsi-direct`` pools: the LUNs of an iSCSI target, reached in user space with
libiscsi (libvirt's storage_backend_iscsi_direct.c), no kernel initiator involved.

- ``<source>``: one ``<host name= port=>`` (the portal), one ``<device path='IQN'/>``
  (the target), ``<initiator><iqn name=/>`` (required) and optionally ``<auth
  type='chap' username=>`` whose ``<secret>`` is in secrets/ (usage type iscsi). The
  password goes to libiscsi by a library call: never on a command line, in an
  environment or in a log.
- start and refresh log in and list the LUNs: REPORT LUNS, then INQUIRY and READ
  CAPACITY(16) per LUN. Volumes are named as libvirt names them, ``unit:0:0:LUN``;
  capacity = (last LBA + 1) x block length (libvirt multiplies the last LBA itself and
  is one block short). LUNs that hold no blocks (tgtd's LUN 0, a storage array
  controller) are not volumes (libvirt lists them with 0 bytes).
- status.xml has libvirt's key and target path (``ip-HOST:PORT-iscsi-IQN-lun-N``); the
  ``iscsi://HOST:PORT/IQN/LUN`` URL a guest opens is the volume's ``url``.
- LUNs cannot be made, removed or resized here (ENOTSUP, as libvirt): that is the
  target's business. ``wipe`` (zero or random) writes every block with WRITE(16).
- The target cannot be watched: the LUNs are listed again every POLL_INTERVAL while
  someone reads the pool. A target that refuses, times out or stops answering makes the
  pool inaccessible with the reason; ``refresh`` or ``start`` brings it back.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable

import trio

from .. import hostcmd
from ..errors import InvalidArgument, NotSupported, StorageError
from . import libiscsi
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy
from .iscsi_source import IscsiSource, check_query, default_initiator, source_documents, url

log = logging.getLogger(__name__)

#: seconds between two listings of the LUNs while someone reads the pool
POLL_INTERVAL = 2.0
#: the session's own limit on one iSCSI command (capped by $STORAGEFS_TOOL_TIMEOUT and
#: halved, so that a command that gets no answer fails before the pool's storage time
#: limit gives up on its thread)
COMMAND_TIMEOUT = 30.0
#: bytes one WRITE(16) of a wipe carries
WIPE_CHUNK = 1 << 20
VOLUME_NAME = re.compile(r"unit:0:0:(\d+)")


def command_timeout() -> float:
    return max(1.0, hostcmd.limit(COMMAND_TIMEOUT) / 2)


class IscsiDirectBackend(PoolBackend):
    type = "iscsi-direct"
    policy = VolumePolicy(formats=(), default_format="raw", wipe_algorithms=("zero", "random"),
                          poll_interval=POLL_INTERVAL)

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self.source = IscsiSource.of(definition)  # EINVAL at define for what never starts
        if not self.source.initiator:
            raise InvalidArgument("missing initiator IQN")
        self._info = PoolInfo()

    # ---- the definition ------------------------------------------------------------
    @classmethod
    def source_key(cls, definition) -> tuple | None:
        from .iscsi_source import source_key
        return source_key(definition)

    def _credentials(self) -> libiscsi.Credentials | None:
        """CHAP from secrets/ (ENOENT without the secret, EACCES without its value)."""
        auth = self.definition.source.auth
        if auth is None:
            return None
        return libiscsi.Credentials(auth.username, self.ctx.auth_value(auth))

    def _session(self) -> libiscsi.Session:
        src = self.source
        return libiscsi.Session(src.host, src.port, src.initiator or "", src.target,
                                chap=self._credentials(), timeout=command_timeout())

    def _volume(self, lun: libiscsi.Lun) -> VolumeInfo:
        src = self.source
        key = src.lun_path(lun.lun)
        return VolumeInfo(name=f"unit:0:0:{lun.lun}", path=None, key=key, format="raw",
                          type="network", capacity=lun.capacity, allocation=lun.capacity,
                          url=url(src.host, src.port, src.target, lun.lun), shown_path=key)

    @staticmethod
    def _lun_of(info: VolumeInfo) -> int:
        m = VOLUME_NAME.fullmatch(info.name)
        if m is None:
            raise InvalidArgument(f"Invalid volume name {info.name}")
        return int(m.group(1))

    # ---- discovery -------------------------------------------------------------------
    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """One pool document per target the portal ``HOST[:PORT]`` offers (SendTargets
        on a discovery session), with this host's initiator name."""
        host, port = check_query(query)
        initiator = default_initiator()

        def work() -> list[tuple[str, list[str]]]:
            with libiscsi.Session(host, port, initiator, None,
                                  timeout=command_timeout()) as s:
                return s.discover()

        limit = hostcmd.limit(COMMAND_TIMEOUT)
        with trio.move_on_after(limit):
            found = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
            return source_documents(cls.type, host, port, [t for t, _ in found], initiator)
        raise StorageError(f"SendTargets discovery on {query} did not answer within "
                           f"{limit:g} s", errno.ETIMEDOUT)

    # ---- pool operations -------------------------------------------------------------
    async def start(self) -> None:
        self._credentials()  # the secret must be there before anything logs in

    async def check(self) -> bool:
        try:
            session = self._session()
            await self.io(lambda: session.open().close(), what="iSCSI login")
        except StorageError:
            return False
        return True

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        session = self._session()

        def listing() -> list[libiscsi.Lun]:
            with session:
                return session.luns()

        luns = await self.io(listing, what=f"list the LUNs of {self.source.target}")
        vols = [self._volume(lun) for lun in luns if lun.holds_blocks]
        total = sum(v.capacity for v in vols)
        self._info = PoolInfo(capacity=total, allocation=total, available=0)
        return self._info, vols

    async def pool_info(self) -> PoolInfo | None:
        return self._info

    # ---- volumes -----------------------------------------------------------------------
    async def wipe_volume(self, info: VolumeInfo, algorithm: str,
                          report: Callable[[float], None]) -> VolumeInfo:
        if algorithm not in self.policy.wipe_algorithms:
            raise NotSupported(f"wipe algorithm '{algorithm}' is not supported for LUNs "
                               f"(supported: {', '.join(self.policy.wipe_algorithms)})")
        lun = self._lun_of(info)
        session = self._session()
        await self.io(session.open, what=f"iSCSI login for the wipe of LUN {lun}")
        try:
            last, block = await self.io(session.read_capacity, lun,
                                        what=f"READ CAPACITY of LUN {lun}")
            blocks, per_write = last + 1, max(1, WIPE_CHUNK // max(block, 1))
            zeros = bytes(per_write * block) if algorithm == "zero" else b""
            lba = 0
            while lba < blocks:
                n = min(per_write, blocks - lba)
                data = zeros[:n * block] if zeros else os.urandom(n * block)
                await self.io(session.write, lun, lba, data, block,
                              what=f"wipe of LUN {lun} at block {lba}")
                lba += n
                report(lba / blocks)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.io(session.close, what=f"iSCSI logout after the wipe of "
                                                      f"LUN {lun}")
                except StorageError as exc:  # a command still hangs: it closes the session
                    log.info("LUN %d: %s", lun, exc.reason)
                    session.abandon()
        info.capacity = info.allocation = blocks * block
        return info
