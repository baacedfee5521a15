"""Definitions on disk, written atomically (temp file, fsync, rename, fsync dir).

Layout of the state directory::

    lock                  flock'ed by the serving process; holds its PID
    pools/NAME.json       one pool: accepted config.xml bytes, uuid, autostart,
                          whether it was running, config.xml's mode/owner/times
                          (a name too long for that is shortened: see record_name)
    pools/NAME.json.broken  a record that could not be read at a start, kept aside
    volumes/POOL/VOL.json a volume's recorded format (of every volume storagefs made or was
                          told about: the bytes inside never choose it again), the
                          signature of the file storagefs made (while nothing else wrote
                          to it) and its accepted config.xml (only when one was written)
    secrets/UUID.json     a secret's accepted config.xml (not for ephemeral secrets)
    secrets/UUID.value    its value, mode 0600, in a directory only root can enter
    images/               the default pool's target
    run/secrets-tmp/      a secret in a file for a host tool while it runs (0700);
                          emptied at every start (secrettmp.py)

A crash at any moment leaves either the old or the new file of an object:
never a torn one (rename is atomic; the temp file is written in full, fsync'ed
and read back first). A write that fails (ENOSPC, EROFS, EDQUOT, EIO ...)
raises StorageError with that errno and leaves the old file as it was and no
temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import uuid as uuidlib
from dataclasses import asdict
from pathlib import Path

from . import secrettmp
from .durable import (
    PendingDelete,
    PendingWrite,
    atomic_write,
    failed,
    prepare_write,
    read_record,
    remove_file,
)
from .errors import Busy, StorageError
from .kept_formats import KeptFormats
from .records import (  # noqa: F401 -- the record types are part of what state offers
    BROKEN,
    BadRecord,
    FileMeta,
    StoredPool,
    StoredSecret,
    StoredVolume,
    decode_bytes,
    encode_bytes,
    field_of,
    load_json,
    merge_meta,
    meta_of,
    named_in,
    record_name,
    salvage,
    stem_of,
    uuid_of,
)

log = logging.getLogger(__name__)



class StateDir:
    """The persistent store; every method is a few syscalls (safe on the event loop)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.pools_dir = self.path / "pools"
        self.volumes_dir = self.path / "volumes"
        self.images_dir = self.path / "images"
        self.secrets_dir = self.path / "secrets"
        #: what exists only while storagefs runs (private mounts of gluster pools)
        self.run_dir = self.path / "run"
        #: the formats of undefined pools' volumes, by storage (kept_formats.py)
        self.kept = KeptFormats(self.path)
        self._lock_fd: int | None = None

    @property
    def is_new(self) -> bool:
        return not self.pools_dir.exists()

    def open(self) -> None:
        """Create the layout and take the lock; Busy if another storagefs serves it."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"state directory {self.path}: {exc.strerror}", exc.errno) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Busy(
                f"state directory {self.path} is already served by storagefs (pid {pid})"
            ) from None
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # full or read-only: the lock holds all the same
            log.warning("cannot record the pid in %s: %s", self.path / "lock", exc.strerror)
        try:
            for d in (self.pools_dir, self.volumes_dir, self.secrets_dir):
                d.mkdir(mode=0o700, exist_ok=True)
            if stat.S_IMODE(self.secrets_dir.stat().st_mode) != 0o700:
                os.chmod(self.secrets_dir, 0o700)
            secrettmp.setup(self.run_dir)  # a killed storagefs's secret files: removed
        except OSError as exc:
            self.close()
            raise StorageError(f"state directory {self.path}: {exc.strerror}", exc.errno) from None
        except StorageError:
            self.close()
            raise
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        """Temp files of writes a crash interrupted (the old file next to them is intact),
        and records renamed aside by an operation a crash interrupted (put back)."""
        for d in (self.pools_dir, self.secrets_dir, *self.volumes_dir.glob("*/"),
                  self.volumes_dir, self.kept.dir):
            for tmp in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.warning("removed %s, left by an interrupted write", tmp)
            for aside in d.glob(".*.del"):
                original = aside.with_name(aside.name[1:].rsplit(".", 2)[0])
                with contextlib.suppress(OSError):
                    if original.exists():
                        aside.unlink()
                    else:
                        os.rename(aside, original)
                        log.warning("put %s back (an interrupted operation had moved it)",
                                    original)

    def check_writable(self) -> None:
        """Refuse at once (EROFS, ENOSPC) what could not be recorded, before an operation
        touches any storage; a write can still fail later, and is then undone."""
        try:
            vfs = os.statvfs(self.pools_dir)
        except OSError as exc:
            raise failed(f"state directory {self.path}", exc) from None
        if vfs.f_flag & os.ST_RDONLY:
            raise StorageError(f"state directory {self.path} is read-only: nothing can be "
                               "recorded", errno.EROFS)
        if vfs.f_bfree == 0:
            raise StorageError(f"state directory {self.path} is full: nothing can be "
                               "recorded", errno.ENOSPC)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _keep_aside(self, entry: Path, reason: str) -> str:
        """Rename an unreadable record to NAME.broken (never dropped); the reason, logged."""
        aside = entry.with_name(entry.name + BROKEN)
        message = f"stored definition {entry} is unreadable ({reason})"
        if aside.exists() or aside.is_symlink():
            message += f"; left in place ({aside.name} exists)"
        else:
            try:
                os.rename(entry, aside)
                message += f"; kept aside as {aside}"
            except OSError as exc:
                message += f"; left in place (cannot rename it: {exc.strerror})"
        log.error("%s", message)
        return message

    # pools
    def load_pools(self) -> list[StoredPool]:
        """Every pool on record; one that cannot be read comes back with ``broken`` set
        (its record kept aside as NAME.json.broken), so that nothing vanishes."""
        pools: dict[str, StoredPool] = {}
        uuids: dict[str, str] = {}
        names = {e.name[:-5] for e in self.pools_dir.glob("*.json")} | \
            {e.name[:-12] for e in self.pools_dir.glob("*.json" + BROKEN)}
        for name in sorted(names):
            entry = self.pools_dir / f"{name}.json"
            if stem_of(entry, ".json") is None:
                continue
            if not entry.exists() and not entry.is_symlink():
                pools[name] = self._earlier_broken_pool(name)
                continue
            try:
                raw = load_json(entry)
                name = named_in(raw, name)
                stored = StoredPool(
                    name=name, config=decode_bytes(field_of(raw, "config", str)), uuid=uuid_of(raw),
                    autostart=field_of(raw, "autostart", bool, False, required=False),
                    active=field_of(raw, "active", bool, False, required=False),
                    meta=meta_of(raw))
                if stored.uuid in uuids:
                    raise BadRecord(f"its uuid {stored.uuid} is pool '{uuids[stored.uuid]}'s",
                                    salvage(raw))
            except BadRecord as exc:
                reason = self._keep_aside(entry, str(exc))
                config = decode_bytes(exc.salvage.get("config", ""))
                pools[name] = StoredPool(name, config, "", broken=reason)
                continue
            if (self.pools_dir / (record_name(name) + BROKEN)).exists():
                log.warning("pool %s: %s.json%s is an older unreadable copy, left in place",
                            name, name, BROKEN)
            uuids[stored.uuid] = name
            pools[name] = stored
        return list(pools.values())

    def _earlier_broken_pool(self, name: str) -> StoredPool:
        aside = self.pools_dir / f"{name}.json{BROKEN}"
        try:
            raw = load_json(aside)
            config = decode_bytes(raw["config"]) if isinstance(raw.get("config"), str) else b""
        except BadRecord:
            config = b""
        reason = (f"stored definition was unreadable and is kept aside as {aside}: write "
                  "config.xml to define the pool again, or rmdir it")
        log.error("pool %s: %s", name, reason)
        return StoredPool(name, config, "", broken=reason)

    def save_pool(self, pool: StoredPool) -> None:
        doc = {"name": pool.name, "config": encode_bytes(pool.config), "uuid": pool.uuid,
               "autostart": pool.autostart, "active": pool.active, "meta": asdict(pool.meta)}
        self._write(self.pools_dir / record_name(pool.name), doc)

    def drop_broken_pool(self, name: str) -> None:
        """After a new definition was saved: the kept-aside record is obsolete."""
        aside = self.pools_dir / (record_name(name) + BROKEN)
        try:
            remove_file(aside)
        except StorageError as exc:
            log.warning("pool %s: %s (left in place)", name, exc.reason)

    def delete_pool(self, name: str) -> None:
        """Remove the pool's record (and a kept-aside one); StorageError when the record
        cannot be removed. Its volumes' records go next (a failure there is logged)."""
        remove_file(self.pools_dir / record_name(name))
        remove_file(self.pools_dir / (record_name(name) + BROKEN))
        vdir = self.volumes_dir / name
        try:
            if vdir.is_dir():
                for f in vdir.iterdir():
                    if f.name.endswith((".json", BROKEN)):
                        f.unlink()
                vdir.rmdir()
        except OSError as exc:
            log.warning("pool %s: cannot remove the volume records in %s: %s", name, vdir,
                        exc.strerror)

    # volume records: the recorded format, and the document if a user wrote one
    def load_volumes(self, pool: str) -> dict[str, StoredVolume]:
        """The volume records of a pool; an unreadable one is kept aside as
        VOL.json.broken and returned with ``broken`` set (the volume itself is found
        on the storage: only its document is lost)."""
        out: dict[str, StoredVolume] = {}
        vdir = self.volumes_dir / pool
        for entry in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
            name = stem_of(entry, ".json")
            if name is None:
                continue
            try:
                raw = load_json(entry)
                name = named_in(raw, name)
                config = field_of(raw, "config", str, None, required=False) \
                    if raw.get("config") is not None else None
                fmt = raw.get("format")
                if not isinstance(fmt, (str, type(None))):
                    raise BadRecord(f"format {fmt!r} is not a string", salvage(raw))
                made = raw.get("made")
                if made is not None and not (isinstance(made, list) and
                                             all(type(x) is int for x in made)):
                    raise BadRecord(f"made {made!r} is not a list of integers", salvage(raw))
                data = None if config is None else decode_bytes(config)
                out[name] = StoredVolume(pool, name, data, meta_of(raw), format=fmt, made=made)
            except BadRecord as exc:
                out[name] = StoredVolume(pool, name, b"", broken=self._keep_aside(entry,
                                                                                  str(exc)))
        return out

    def volume_path(self, pool: str, name: str) -> Path:
        return self.volumes_dir / pool / record_name(name)

    def prepare_volume(self, vol: StoredVolume) -> PendingWrite:
        vdir = self.volumes_dir / vol.pool
        try:
            vdir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise failed(f"cannot save {vdir}", exc) from None
        doc = {"name": vol.name, "config": None if vol.config is None else encode_bytes(vol.config),
               "meta": asdict(vol.meta), "format": vol.format, "made": vol.made}
        return prepare_write(vdir / record_name(vol.name), json.dumps(doc, indent=1).encode())

    def save_volume(self, vol: StoredVolume) -> None:
        self.prepare_volume(vol).commit()

    def delete_volume(self, pool: str, name: str) -> None:
        remove_file(self.volume_path(pool, name))

    def stage_delete_volume(self, pool: str, name: str) -> PendingDelete:
        return PendingDelete(self.volume_path(pool, name))

    # secrets
    def load_secrets(self) -> list[StoredSecret]:
        """Every stored secret; an unreadable record is kept aside as UUID.json.broken
        and returned with ``broken`` set (and its value, so a new document keeps it)."""
        out = []
        names = {e.name[:-5] for e in self.secrets_dir.glob("*.json")} | \
            {e.name[:-12] for e in self.secrets_dir.glob("*.json" + BROKEN)}
        for uid in sorted(names):
            entry = self.secrets_dir / f"{uid}.json"
            try:
                canonical = str(uuidlib.UUID(uid)) == uid
            except ValueError:
                canonical = False
            if not canonical:
                log.error("ignoring %s: '%s' is not a canonical UUID", entry, uid)
                continue
            value, broken, config, meta = None, "", b"", FileMeta()
            try:
                value = self._read_value(uid)
                if not entry.exists() and not entry.is_symlink():
                    raise BadRecord(f"kept aside as {entry}{BROKEN} at an earlier start")
                raw = load_json(entry)
                if uuid_of(raw) != uid:
                    raise BadRecord(f"it names secret {raw['uuid']}", salvage(raw))
                config, meta = decode_bytes(field_of(raw, "config", str)), meta_of(raw)
            except BadRecord as exc:
                if entry.exists() or entry.is_symlink():
                    broken = self._keep_aside(entry, str(exc))
                else:
                    broken = f"stored definition was unreadable: {exc}"
                    log.error("secret %s: %s", uid, broken)
                config = decode_bytes(exc.salvage.get("config", ""))
            out.append(StoredSecret(uid, config, meta, value, broken))
        return out

    def _read_value(self, uid: str) -> bytes | None:
        path = self.secrets_dir / f"{uid}.value"
        try:
            return read_record(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BadRecord(f"its value {path} is unreadable: {exc.strerror}") from None

    def prepare_secret(self, uuid: str, config: bytes, meta: FileMeta) -> PendingWrite:
        doc = {"uuid": uuid, "config": encode_bytes(config), "meta": asdict(meta)}
        return prepare_write(self.secrets_dir / f"{uuid}.json",
                             json.dumps(doc, indent=1).encode())

    def prepare_secret_value(self, uuid: str, value: bytes) -> PendingWrite:
        return prepare_write(self.secrets_dir / f"{uuid}.value", value, mode=0o600)

    def save_secret(self, uuid: str, config: bytes, meta: FileMeta) -> None:
        self.prepare_secret(uuid, config, meta).commit()

    def save_secret_value(self, uuid: str, value: bytes | None) -> None:
        path = self.secrets_dir / f"{uuid}.value"
        if value is None:
            remove_file(path)
        else:
            atomic_write(path, value, mode=0o600)

    def delete_secret(self, uuid: str) -> None:
        """The record first (then the secret is gone), then its value and a kept-aside
        record (a failure there is logged: the value file stays 0600 in a 0700 dir)."""
        remove_file(self.secrets_dir / f"{uuid}.json")
        for suffix in (f".json{BROKEN}", ".value"):
            try:
                remove_file(self.secrets_dir / f"{uuid}{suffix}")
            except StorageError as exc:
                log.error("secret %s: %s", uuid, exc.reason)

    def delete_secret_aside(self, uuid: str) -> None:
        """After a new definition was saved: the kept-aside record is obsolete."""
        try:
            remove_file(self.secrets_dir / f"{uuid}.json{BROKEN}")
        except StorageError as exc:
            log.warning("secret %s: %s (left in place)", uuid, exc.reason)

    def _write(self, path: Path, doc: dict) -> None:
        atomic_write(path, json.dumps(doc, indent=1).encode())
