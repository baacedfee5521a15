"""``iscsi`` pools: the LUNs of an iSCSI target logged in with the kernel's initiator
(open-iscsi's iscsiadm and iscsid), as libvirt's storage_backend_iscsi.c does it.

- start: when no session to the target exists, a node record (``--op new``), CHAP in
  it (the password written into the root-only record, never on a command line: see
  iscsiadm.py), then ``--login`` — through an iface bound to the pool's initiator IQN
  when ``<initiator>`` names one (made as ``storagefs-iface-XXXXXXXX`` if missing, and
  the portal's targets discovered through it, as libvirt does).
- refresh: ``iscsiadm --mode session -r SID -R`` (rescan), then the session's SCSI host
  in sysfs and its disk and CD/DVD units: volumes ``unit:BUS:TARGET:LUN``, block
  devices at their stable path in the pool's target (``/dev/disk/by-path/...``).
- stop: ``--logout`` when a session exists.
- find_sources: ``iscsiadm --mode discovery --type sendtargets --op nonpersistent``.

Untested end to end on the project's test machine: its kernel has no iSCSI initiator
(iscsi_tcp), so iscsiadm cannot log in, and even SendTargets discovery fails there
("iSCSI driver tcp is not loaded"). The command lines, the parsing of iscsiadm's output,
the node-record editing and the sysfs walk are tested on their own.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets

import trio

from .. import hostcmd
from ..errors import StorageError
from . import blockdev, iscsiadm
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy
from .iscsi_source import IscsiSource, check_query, portal, source_documents

log = logging.getLogger(__name__)

TIMEOUT = 120  # iscsiadm's own login timeout is 120 s (node.conn[0].timeo.login_timeout 15 x 8)
POLL_INTERVAL = 2.0
#: udev's scsi_id, which libvirt asks for a unit's key (virStorageFileGetSCSIKey)
SCSI_ID = ("/lib/udev/scsi_id", "/usr/lib/udev/scsi_id")


class IscsiBackend(PoolBackend):
    type = "iscsi"
    policy = VolumePolicy(formats=(), default_format="raw", poll_interval=POLL_INTERVAL)

    def __init__(self, definition, ctx=None, *, sysfs: str = iscsiadm.SYSFS,
                 nodes_dir: str = iscsiadm.NODES_DIR) -> None:
        super().__init__(definition, ctx)
        self.source = IscsiSource.of(definition)
        self.sysfs, self.nodes_dir = sysfs, nodes_dir
        self._info = PoolInfo()
        self._keys: dict[str, tuple[int, str]] = {}

    @classmethod
    def source_key(cls, definition) -> tuple | None:
        from .iscsi_source import source_key
        return source_key(definition)

    @property
    def target_dir(self) -> str:
        return self.definition.target_path or "/dev/disk/by-path"

    # ---- iscsiadm ---------------------------------------------------------------------
    @staticmethod
    async def _run(argv: list[str], what: str, ok: tuple[int, ...] = ()) -> hostcmd.Result:
        res = await hostcmd.run(argv, timeout=TIMEOUT, check=False)
        if res.returncode != 0 and res.returncode not in ok:
            reason = iscsiadm.reason(res.stderr, res.stdout) or f"exit {res.returncode}"
            raise StorageError(f"{what}: {reason}", iscsiadm.tool_errno(res.returncode))
        return res

    async def session(self) -> str | None:
        """The id of the session to the pool's target, or None."""
        res = await self._run(iscsiadm.session_argv(), "iscsiadm --mode session",
                              ok=(iscsiadm.EXIT_NO_OBJECTS,))
        return iscsiadm.session_of(res.stdout, self.source.target)

    async def _iface(self) -> str | None:
        """The iface bound to the pool's initiator IQN (made when missing)."""
        initiator = self.source.initiator
        if not initiator:
            return None
        res = await self._run(iscsiadm.iface_list_argv(), "iscsiadm --mode iface")
        found = iscsiadm.iface_for(res.stdout, initiator)
        if found:
            return found
        name = f"storagefs-iface-{secrets.randbits(30):08x}"
        # iscsiadm's exit status is not trusted here either (libvirt: older versions
        # returned > 0 on success): the iface is looked up again
        await hostcmd.run(iscsiadm.iface_new_argv(name), timeout=TIMEOUT, check=False)
        await hostcmd.run(iscsiadm.iface_initiator_argv(name, initiator), timeout=TIMEOUT,
                          check=False)
        res = await self._run(iscsiadm.iface_list_argv(), "iscsiadm --mode iface")
        found = iscsiadm.iface_for(res.stdout, initiator)
        if not found:
            raise StorageError(f"cannot make an iSCSI interface for initiator '{initiator}'",
                               errno.EIO)
        # iscsiadm knows no node through a new iface before a sendtargets through it
        await self._run(iscsiadm.discovery_argv(self.source.portal, found, persist=True),
                        f"SendTargets discovery on {self.source.portal}")
        return found

    async def _set_auth(self) -> None:
        auth = self.definition.source.auth
        if auth is None:
            return
        password = self.ctx.auth_value(auth).decode("utf-8", errors="strict")
        src = self.source
        for name, value in (("node.session.auth.authmethod", "CHAP"),
                            ("node.session.auth.username", auth.username)):
            await self._run(iscsiadm.node_update_argv(src.portal, src.target, name, value),
                            f"cannot set {name} of node {src.target}")
        records = iscsiadm.record_paths(src.target, src.host, src.port or 3260,
                                        self.nodes_dir)
        if not records:
            raise StorageError(f"no node record of {src.target} at {src.portal} in "
                               f"{self.nodes_dir} to hold the CHAP password", errno.ENOENT)
        for path in records:
            await self.io(iscsiadm.write_record, path,
                          {"node.session.auth.password": password},
                          what=f"write the node record {path}")

    # ---- pool operations ----------------------------------------------------------------
    async def check(self) -> bool:
        try:
            return await self.session() is not None
        except StorageError:
            return False

    async def start(self) -> None:
        if await self.session() is not None:
            return  # logged in already (by us before a restart, or by the admin)
        src = self.source
        had_record = bool(iscsiadm.record_paths(src.target, src.host, src.port or 3260,
                                                self.nodes_dir))
        # a static node record of the target: needed before a login (libvirt's
        # virISCSINodeNew); one made here is removed again if the login fails
        await self._run(iscsiadm.node_new_argv(src.portal, src.target),
                        f"cannot make a node record of {src.target}")
        try:
            await self._set_auth()
            iface = await self._iface()
            await self._run(iscsiadm.connection_argv(src.portal, src.target, "--login",
                                                     iface),
                            f"login to {src.target} at {src.portal} failed",
                            ok=(iscsiadm.EXIT_SESSION_EXISTS,))
        except BaseException:
            if not had_record:
                with trio.CancelScope(shield=True):
                    await hostcmd.run(iscsiadm.node_delete_argv(src.portal, src.target),
                                      timeout=30, check=False)
            raise

    async def stop(self) -> None:
        if await self.session() is None:
            return
        src = self.source
        iface = await self._iface()
        await self._run(iscsiadm.connection_argv(src.portal, src.target, "--logout", iface),
                        f"logout from {src.target} failed")

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        sid = await self.session()
        if sid is None:
            raise StorageError(f"cannot find iscsiadm session of {self.source.target}",
                               errno.ENOENT)
        await self._run(iscsiadm.rescan_argv(sid), f"rescan of session {sid}")
        host = await self.io(iscsiadm.session_host, sid, self.sysfs, what="sysfs")
        units = await self.io(iscsiadm.scsi_units, host, self.sysfs, what="sysfs")
        vols = []
        for unit in units:
            if unit.block is None:
                continue  # no block device yet (libvirt skips it too)
            key = await self._key(f"/dev/{unit.block}")
            vols.append(await self.io(self._volume, unit, key, what="sysfs"))
        total = sum(v.capacity for v in vols)
        self._info = PoolInfo(capacity=total, allocation=total, available=0)
        return self._info, vols

    async def pool_info(self) -> PoolInfo | None:
        return self._info

    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        host, port = check_query(query)
        res = await cls._run(iscsiadm.discovery_argv(portal(host, port)),
                             f"SendTargets discovery on {portal(host, port)}")
        targets = [t for _, _, t in iscsiadm.parse_targets(res.stdout)]
        return source_documents(cls.type, host, port, targets, None, "/dev/disk/by-path")

    # ---- volumes ----------------------------------------------------------------------------
    def _volume(self, unit: iscsiadm.ScsiUnit, key: str) -> VolumeInfo:
        devnode = f"/dev/{unit.block}"
        target = self.target_dir.rstrip("/")
        path = devnode
        if target.startswith("/dev/"):  # libvirt: a target of /dev keeps the kernel name
            path = iscsiadm.stable_path(target, devnode)
        size = blockdev.device_size(devnode)
        info = VolumeInfo(name=unit.name, path=path, key=key, format="raw", type="block",
                          capacity=size, allocation=size)
        return blockdev.stat_node(info, devnode)

    async def _key(self, devnode: str) -> str:
        """libvirt's key of a SCSI unit: what ``scsi_id --replace-whitespace
        --whitelisted`` says, else the device node. Cached per node and device number
        (the pool is listed every POLL_INTERVAL while read)."""
        try:
            rdev = os.stat(devnode).st_rdev
        except OSError:
            return devnode
        hit = self._keys.get(devnode)
        if hit is not None and hit[0] == rdev:
            return hit[1]
        key = devnode
        tool = next((t for t in SCSI_ID if os.access(t, os.X_OK)), None)
        if tool is not None:
            res = await hostcmd.run([tool, "--replace-whitespace", "--whitelisted",
                                     "--device", devnode], timeout=30, check=False)
            if res.returncode == 0:
                key = iscsiadm.scsi_id_key(res.stdout) or devnode
        self._keys[devnode] = (rdev, key)
        return key
