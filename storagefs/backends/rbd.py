"""``rbd`` pools: the images of a Ceph pool (libvirt's storage_backend_rbd.c).

``<source><name>POOL</name><host name='MON' port='6789'/><auth username='U'
type='ceph'><secret uuid='...'/></auth></source>``; no ``<auth>``: a cluster with
``auth ... = none``. Every call is the ``rbd``/``rados`` CLI (rbdtool.py says why), with
the pool's monitors and the cephx key in a 0600 keyring that exists only while the tool
runs.

- listing: one ``rbd ls -l --format json`` for every image, its size, parent and
  snapshots (never one open per image) and one ``rados df`` for the figures. Volumes
  are raw (RBD fixes the format). Allocation: an image with fast-diff (its object map
  says which objects exist) gets ``used_size`` of ``rbd du --format json``, one call
  for the pool (one per such image when others lack fast-diff: du would read every
  object of those; one call again past DU_ONE_BY_ONE of them), made with the figures
  in the background, at most every DU_EVERY seconds and 1/DU_DUTY of the time, never
  on a read; any other image shows its capacity (libvirt's
  ``<refresh><volume allocation='capacity'/>``).
- the pool is polled (``poll_interval``) while someone reads it: an image made or
  removed by another host shows up or goes within that time.
- create is ``rbd create`` (atomic in the cluster: of two hosts making one name, one
  gets EEXIST); a clone is copied under a hidden name and renamed into place, so no host
  lists a half-made volume.
- delete refuses an image with snapshots, with Ceph's reason (remove them in
  ``snapshots/`` first); resize needs ``--shrink`` to shrink; wipe writes zeros
  (qemu-img from a zero source) or discards (trim).
- operations that read and then change a volume take a lock every host respects
  (rbdlock.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os

import trio

from .. import hostcmd
from ..errors import Busy, Exists, InvalidArgument, NotSupported, StorageError
from . import rbdlock
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy, VolumeSpec
from .fileops import Snapshot
from .rbd_copies import RbdCopies
from .rbdtool import (
    LONG_TIMEOUT,
    QUICK_TIMEOUT,
    Connection,
    ImageRow,
    call,
    call_json,
    ceph_reason,
    key_text,
    keyring,
    parse_df,
    parse_du,
    parse_json,
    parse_ls_long,
)

log = logging.getLogger(__name__)

#: seconds between two listings of a pool someone reads (other hosts' changes)
POLL_INTERVAL = 1.0
#: Debian's Python, whose python3-rados the listing script uses
SYSTEM_PYTHON = "/usr/bin/python3"
LISTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rbd_lister.py")
#: None: not tried yet; False: that Python has no rados module
_LISTER_OK: bool | None = None
#: seconds between two rbd du calls of a pool (the figures task runs more often)
DU_EVERY = 5.0
#: rbd du runs at most 1/DU_DUTY of the time (a du of 2 s: every 20 s at most)
DU_DUTY = 10.0
#: where some images lack fast-diff: up to this many fast-diff images are measured one
#: by one; more, and one rbd du of the pool (which reads the others' objects) it is
DU_ONE_BY_ONE = 32


class RbdBackend(RbdCopies, PoolBackend):
    type = "rbd"
    policy = VolumePolicy(formats=("raw",), default_format="raw",
                          wipe_algorithms=("zero", "trim"),
                          snapshots={"raw": ("engine",)}, watchable=False,
                          poll_interval=POLL_INTERVAL)
    purges_snapshots = True
    linked_clones = True

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._info: PoolInfo | None = None
        #: the figures the last listing brought along (None: ask rados df)
        self._listed_df: tuple[int, int, int] | None = None
        #: images with fast-diff (from the listing or rbd info), their rbd du used_size
        self._fast: set[str] = set()
        self._listed: set[str] = set()
        self._used: dict[str, int] = {}
        self._du_at = -DU_EVERY
        self._du_took = 0.0

    # ---- the definition -------------------------------------------------------------
    @property
    def pool(self) -> str:
        return self.definition.source.name or self.definition.name

    def mons(self) -> list[str]:
        """Monitor addresses. A port names its protocol: 3300 msgr2, any other msgr1
        (6789, libvirt's default) — on a bare host:port librados tries msgr2 first, and
        a wrong key then times out instead of saying "Permission denied"."""
        return [(f"v2:{h.name}:{h.port}" if h.port == 3300 else f"v1:{h.name}:{h.port}")
                if h.port else h.name for h in self.definition.source.hosts]

    def conn(self) -> Connection:
        """The connection, with the key as it is in secrets/ right now."""
        auth = self.definition.source.auth
        if auth is None:
            return Connection(self.pool, self.mons())
        return Connection(self.pool, self.mons(), auth.username,
                          key_text(self.ctx.auth_value(auth)))

    @classmethod
    def source_key(cls, definition) -> tuple | None:
        hosts = tuple(sorted((h.name, h.port or 0) for h in definition.source.hosts))
        return ("rbd", hosts, definition.source.name or definition.name)

    def _spec(self, name: str) -> str:
        return f"{self.pool}/{name}"

    async def _rbd(self, *argv: str, what: str, timeout: float | None = None):
        kw = {"timeout": timeout} if timeout else {}
        return await call(self.conn(), "rbd", argv, what=what, **kw)

    async def _json(self, *argv: str, what: str):
        return await call_json(self.conn(), "rbd", argv, what=what)

    # ---- volumes as VolumeInfo ----------------------------------------------------------
    def _volume(self, name: str, size: int, snaps: list[dict],
                parent: str | None = None) -> VolumeInfo:
        spec = self._spec(name)
        used = self._used.get(name, size) if name in self._fast else size
        # no physical size: libvirt's rbd backend prints no <physical> either
        info = VolumeInfo(name=name, path=None, key=spec, format="raw", type="network",
                          capacity=size, allocation=min(used, size), url=spec)
        info.snapshots = [Snapshot(s["name"], s.get("id", ""), s.get("date", ""))
                          for s in snaps]
        if parent:
            info.options = {"parent": parent}
        return info

    def _from_row(self, row: ImageRow) -> VolumeInfo:
        return self._volume(row.name, row.size, row.snapshots, row.parent)

    # ---- pool operations ------------------------------------------------------------------
    async def check(self) -> bool:
        try:
            await self._rbd("ls", "-p", self.pool, what="list images")
        except StorageError:
            return False
        return True

    async def start(self) -> None:
        if not self.definition.source.hosts:
            raise InvalidArgument("an rbd pool needs <host name='MONITOR'/> in <source>")
        await self._rbd("ls", "-p", self.pool,
                        what=f"failed to connect to Ceph pool '{self.pool}'")

    async def pool_info(self) -> PoolInfo | None:
        data = await call_json(self.conn(), "rados", ["-p", self.pool, "df"],
                               what=f"failed to stat the Ceph pool '{self.pool}'")
        sizes = parse_df(data, self.pool)
        if sizes is not None:
            self._info = PoolInfo(*sizes)
        return self._info

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        # one after the other: a nursery would wrap a refusal in an ExceptionGroup
        rows = parse_ls_long(await self._listing())
        if self._listed_df is None:
            await self.pool_info()
        # a listing that tells no features (rbd ls -l) keeps what rbd info said
        self._fast = {r.name for r in rows if r.fast_diff or
                      (r.features is None and r.name in self._fast)}
        self._listed = {r.name for r in rows if not r.name.startswith(".")}
        vols = [self._from_row(r) for r in rows if not r.name.startswith(".")]
        return self._info or PoolInfo(), vols

    async def _listing(self) -> object:
        """Every image with its size and snapshots, as ``rbd ls -l --format json`` rows:
        from rbd_lister.py under Debian's Python (reads the header objects, opens no
        image: 5x faster), else from ``rbd ls -l`` (which opens each one)."""
        what = f"failed to list the images of '{self.pool}'"
        global _LISTER_OK
        self._listed_df = None
        cli_only = os.environ.get("STORAGEFS_RBD_LISTING") == "cli"  # tests, or by choice
        if _LISTER_OK is not False and not cli_only and os.path.exists(SYSTEM_PYTHON):
            conn = self.conn()
            limit = hostcmd.limit(QUICK_TIMEOUT)
            async with keyring(conn) as kr:
                cfg = {"pool": conn.pool, "mon_host": conn.mon_host(), "user": conn.user,
                       "keyring": kr, "timeout": max(1, int(limit) - 1)}
                try:
                    res = await hostcmd.run([SYSTEM_PYTHON, LISTER], timeout=limit,
                                            check=False, stdin=json.dumps(cfg).encode())
                except StorageError as exc:
                    raise StorageError(f"{what}: {exc.reason}", errno.ETIMEDOUT) from None
            if res.returncode == 0:
                _LISTER_OK = True
                data = parse_json(res.stdout, what)
                data = data if isinstance(data, dict) else {}
                self._listed_df = parse_df(data.get("df"), self.pool)
                if self._listed_df is not None:
                    self._info = PoolInfo(*self._listed_df)
                return data.get("images")
            if "Traceback" not in res.stderr:  # Ceph's refusal: the same for rbd
                reason, code = ceph_reason(res.stderr, res.returncode)
                raise StorageError(f"{what}: {reason}", code)
            if "ModuleNotFoundError" in res.stderr:
                _LISTER_OK = False  # no python3-rados: rbd ls -l from now on
            log.warning("pool %s: %s failed (%s); listing with rbd ls -l", self.pool,
                        LISTER, res.stderr.strip().splitlines()[-1][:200])
        return await self._json("ls", "-l", "-p", self.pool, what=what)

    # ---- one volume ----------------------------------------------------------------------
    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        try:
            data = await self._json("info", self._spec(name), what=f"rbd info '{name}'")
            snaps = await self._json("snap", "ls", self._spec(name),
                                     what=f"rbd snap ls '{name}'")
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if not isinstance(data, dict):
            return None
        size = int(data.get("size", 0) or 0)
        features = data.get("features")
        if isinstance(features, list) and "fast-diff" in features:
            self._fast.add(name)
        else:
            self._fast.discard(name)
        parent = data.get("parent")
        pname = None
        if isinstance(parent, dict) and parent.get("image"):
            pname = f"{parent.get('pool')}/{parent['image']}@{parent.get('snapshot')}"
        rows = [{"name": str(s.get("name")), "id": str(s.get("id", "")),
                 "date": str(s.get("timestamp", ""))}
                for s in (snaps or []) if isinstance(s, dict)]
        return self._volume(name, size, rows, pname)

    async def volume_allocations(self) -> dict[str, int] | None:
        fast = self._fast & self._listed
        if not fast:
            return None
        # every DU_EVERY seconds, and never more than 1/DU_DUTY of the time (du of a
        # large pool opens every image); a new image at the next refresh that allows
        now = trio.current_time()
        wait = max(DU_EVERY, DU_DUTY * self._du_took)
        new = bool(fast - self._used.keys())
        if now - self._du_at >= wait or (new and now - self._du_at >= DU_DUTY *
                                         self._du_took):
            self._du_at = now
            used: dict[str, int] = {}
            try:
                if fast == self._listed or len(fast) > DU_ONE_BY_ONE:  # one call
                    used = parse_du(await self._json("du", "-p", self.pool,
                                                     what=f"rbd du of '{self.pool}'"))
                else:  # du of the others would read every one of their objects
                    for name in sorted(fast):
                        used.update(parse_du(await self._json(
                            "du", self._spec(name), what=f"rbd du '{self._spec(name)}'")))
            except StorageError as exc:
                # an image removed meanwhile, a du past its time limit (a huge pool):
                # the figures stay as they were and the next try waits 10x as long; a
                # cluster that is gone is the listing's to tell (inaccessible)
                self._du_took = trio.current_time() - now
                log.info("pool %s: allocations not refreshed: %s", self.pool, exc.reason)
                return {n: self._used[n] for n in fast if n in self._used}
            self._du_took = trio.current_time() - now
            self._used = used
        return {n: self._used[n] for n in fast if n in self._used}

    async def _must_probe(self, name: str) -> VolumeInfo:
        info = await self.probe_volume(name)
        if info is None:
            raise StorageError(f"image '{self._spec(name)}' vanished", errno.ENOENT)
        return info

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        return await self.probe_volume(info.name) or info

    def check_volume_name(self, name: str) -> None:
        if "/" in name or "@" in name or name.startswith(".") or not name:
            raise InvalidArgument(f"'{name}' cannot be an RBD image name ('/', '@' and a "
                                  "leading '.' are not allowed)")

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        self.check_volume_name(spec.name)
        if spec.format not in ("raw", ""):
            raise NotSupported(f"RBD images are raw; format '{spec.format}' is not "
                               "supported")
        if spec.encryption or spec.backing_path:
            raise NotSupported("encrypted RBD images and backing stores are not supported")
        if spec.capacity <= 0:
            raise InvalidArgument("an RBD image needs a capacity above 0")
        try:
            await self._rbd("create", self._spec(spec.name), "--size", f"{spec.capacity}B",
                            what=f"failed to create volume '{self._spec(spec.name)}'")
        except StorageError as exc:
            if exc.errno == errno.EEXIST:
                raise Exists(exc.reason) from None
            raise
        return await self._must_probe(spec.name)

    async def delete_volume(self, info: VolumeInfo, purge_snapshots: bool = False) -> None:
        if purge_snapshots:
            await self._purge_snapshots(info)
        try:
            await self._rbd("rm", "--no-progress", self._spec(info.name),
                            what=f"failed to remove volume '{info.key}'")
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno == errno.ENOTEMPTY:
                raise StorageError(f"{exc.reason.rstrip('.')} (remove them in "
                                   "snapshots/ first, or 'delete --purge-snapshots')",
                                   errno.ENOTEMPTY) from None
            raise

    async def _purge_snapshots(self, info: VolumeInfo) -> None:
        """``rbd snap purge``, after a check that no snapshot is protected (purge would
        remove the others and then fail): nothing is unprotected behind the user's back,
        and a refusal changes nothing."""
        spec = self._spec(info.name)
        snaps = await self._json("snap", "ls", spec, what=f"rbd snap ls '{spec}'")
        prot = [str(s.get("name")) for s in (snaps or []) if isinstance(s, dict)
                and str(s.get("protected", "false")).lower() == "true"]
        if prot:
            raise Busy(f"cannot purge the snapshots of '{spec}': "
                       f"{', '.join(prot)} {'is' if len(prot) == 1 else 'are'} protected "
                       "(rbd snap unprotect, after its clones are flattened or removed)")
        if snaps:
            await self._rbd("snap", "purge", "--no-progress", spec,
                            what=f"failed to purge the snapshots of '{spec}'",
                            timeout=LONG_TIMEOUT)

    async def resize_volume(self, info: VolumeInfo, capacity: int, *, shrink: bool = False,
                            allocate: bool = False, **_ignored) -> VolumeInfo:
        if capacity <= 0:
            raise InvalidArgument("an RBD image needs a capacity above 0")
        if capacity < info.capacity and not shrink:
            raise InvalidArgument(f"cannot shrink '{info.key}' from {info.capacity} to "
                                  f"{capacity} bytes without 'resize --shrink'")
        argv = ["resize", "--no-progress", self._spec(info.name), "--size", f"{capacity}B"]
        if capacity < info.capacity:
            argv.append("--allow-shrink")
        await self._rbd(*argv, what=f"failed to resize volume '{info.key}'",
                        timeout=LONG_TIMEOUT)
        return await self._must_probe(info.name)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        snap = f"{self._spec(info.name)}@{name}"
        argv = {"create": ["snap", "create", "--no-progress", snap],
                "revert": ["snap", "rollback", "--no-progress", snap],
                "delete": ["snap", "rm", "--no-progress", snap]}[op]
        try:
            await self._rbd(*argv, what=f"failed to {op} snapshot '{snap}'",
                            timeout=LONG_TIMEOUT)
        except StorageError as exc:
            if op == "delete" and exc.errno == errno.EBUSY:
                raise Busy(f"snapshot '{snap}' is protected (rbd snap unprotect it first, "
                           "or remove its clones)") from None
            raise
        return await self._must_probe(info.name)

    # ---- locks across hosts -----------------------------------------------------------------
    def volume_lock(self, info: VolumeInfo, op: str):
        return rbdlock.held(self.conn(), info.name, self.ctx.host, op, self.ctx.runner)
