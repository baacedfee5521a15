"""Definitions on disk, written atomically (temp file, fsync, rename, fsync dir).

Layout of the state directory::

    lock                  flock'ed by the serving process; holds its PID
    pools/NAME.json       one pool: accepted config.xml bytes, uuid, autostart,
                          (for a name too long for that: DIGEST.long.json, see record_file)
                          whether it was running, config.xml's mode/owner/times
    volumes/POOL/VOL.json a volume's accepted config.xml (when one was written) and the
                          signature of the file storagefs made (while nothing else wrote)
    secrets/UUID.json     a secret's accepted config.xml (not for ephemeral secrets)
    secrets/UUID.value    its value, mode 0600, in a directory only root can enter
    images/               the default pool's target

A crash at any moment leaves either the old or the new file of an object:
never a torn one (rename is atomic; the temp file is fsync'ed first).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import Busy, StorageError

log = logging.getLogger(__name__)


@dataclass
class FileMeta:
    """Mode, owner and times of a writable file such as config.xml (they round-trip)."""

    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


def merge_meta(old: FileMeta, given: FileMeta | None, content_changed: bool) -> FileMeta:
    """config.xml's metadata after a write or a rename onto it.

    ``given`` (a renamed scratch file's mode, owner and times) wins; mtime moves
    to now only when the content changed and no time was given explicitly, so
    writing the same document again leaves mtime alone.
    """
    new = FileMeta(**vars(given if given is not None else old))
    now = time.time_ns()
    if content_changed and new.mtime_ns == old.mtime_ns:
        new.mtime_ns = now
    new.ctime_ns = now
    return new


@dataclass
class StoredPool:
    name: str
    config: bytes
    uuid: str
    autostart: bool = False
    active: bool = False
    meta: FileMeta = field(default_factory=FileMeta)


@dataclass
class StoredVolume:
    pool: str
    name: str
    #: None: no document was accepted (config.xml is generated)
    config: bytes | None
    meta: FileMeta = field(default_factory=FileMeta)
    #: see objects.Volume.made
    made: list[int] | None = None


def record_file(name: str) -> str:
    """``NAME.json``, or for a name too long for that (a name may have 255 bytes), the
    SHA-256 of the name: the record holds the name itself, which is what loading reads."""
    file = f"{name}.json"
    if len(os.fsencode(file)) <= 250:  # atomic_write's temp name adds 5 bytes
        return file
    return f"{hashlib.sha256(os.fsencode(name)).hexdigest()}.long.json"


def _enc(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _dec(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def atomic_write(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Temp file and rename; ``durable`` fsyncs the file and the directory too."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateDir:
    """The persistent store; every method is a few syscalls (safe on the event loop)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.pools_dir = self.path / "pools"
        self.volumes_dir = self.path / "volumes"
        self.images_dir = self.path / "images"
        self.secrets_dir = self.path / "secrets"
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        for d in (self.pools_dir, self.volumes_dir, self.secrets_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        """Temp files of writes a crash interrupted: the old file next to them is intact."""
        for d in (self.pools_dir, self.secrets_dir, *self.volumes_dir.glob("*/"),
                  self.volumes_dir):
            for tmp in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.warning("removed %s, left by an interrupted write", tmp)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # pools
    def load_pools(self) -> list[StoredPool]:
        pools = []
        for entry in sorted(self.pools_dir.glob("*.json")):
            try:
                raw = json.loads(entry.read_text())
                pools.append(StoredPool(
                    name=raw["name"], config=_dec(raw["config"]), uuid=raw["uuid"],
                    autostart=bool(raw.get("autostart")), active=bool(raw.get("active")),
                    meta=FileMeta(**raw.get("meta", {})),
                ))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("skipping unreadable pool definition %s: %s", entry, exc)
        return pools

    def save_pool(self, pool: StoredPool) -> None:
        doc = {"name": pool.name, "config": _enc(pool.config), "uuid": pool.uuid,
               "autostart": pool.autostart, "active": pool.active, "meta": asdict(pool.meta)}
        self._write(self.pools_dir / record_file(pool.name), doc)

    def delete_pool(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pools_dir / record_file(name))
        vdir = self.volumes_dir / name
        if vdir.is_dir():
            for f in vdir.glob("*.json"):
                f.unlink()
            with contextlib.suppress(OSError):
                vdir.rmdir()
        fsync_dir(self.pools_dir)

    # volume definitions (only those a user wrote)
    def load_volumes(self, pool: str) -> dict[str, StoredVolume]:
        out: dict[str, StoredVolume] = {}
        vdir = self.volumes_dir / pool
        for entry in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
            try:
                raw = json.loads(entry.read_text())
                config = raw.get("config")
                made = raw.get("made")
                out[raw["name"]] = StoredVolume(
                    pool, raw["name"], None if config is None else _dec(config),
                    FileMeta(**raw.get("meta", {})),
                    [int(x) for x in made] if isinstance(made, list) else None)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("skipping unreadable volume definition %s: %s", entry, exc)
        return out

    def save_volume(self, vol: StoredVolume) -> None:
        """A record with a document is durable (fsync'ed). One with only the signature
        of a file storagefs made is not: mkdir stays a few syscalls, and a crash that
        loses it only makes the volume count as one that may hold data."""
        vdir = self.volumes_dir / vol.pool
        vdir.mkdir(mode=0o700, exist_ok=True)
        doc = {"name": vol.name, "config": None if vol.config is None else _enc(vol.config),
               "meta": asdict(vol.meta), "made": vol.made}
        self._write(vdir / record_file(vol.name), doc, durable=vol.config is not None)

    def delete_volume(self, pool: str, name: str, durable: bool = True) -> None:
        """``durable=False`` for a record that held no document (see save_volume)."""
        path = self.volumes_dir / pool / record_file(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        if durable:
            fsync_dir(path.parent)

    # secrets
    def load_secrets(self) -> list[tuple[str, bytes, FileMeta, bytes | None]]:
        """(uuid, config, meta, value or None) for each stored secret."""
        out = []
        for entry in sorted(self.secrets_dir.glob("*.json")):
            try:
                raw = json.loads(entry.read_text())
                value_path = self.secrets_dir / f"{raw['uuid']}.value"
                value = value_path.read_bytes() if value_path.exists() else None
                out.append((raw["uuid"], _dec(raw["config"]), FileMeta(**raw.get("meta", {})),
                            value))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("skipping unreadable secret %s: %s", entry.name, exc)
        return out

    def save_secret(self, uuid: str, config: bytes, meta: FileMeta) -> None:
        doc = {"uuid": uuid, "config": _enc(config), "meta": asdict(meta)}
        self._write(self.secrets_dir / f"{uuid}.json", doc)

    def save_secret_value(self, uuid: str, value: bytes | None) -> None:
        path = self.secrets_dir / f"{uuid}.value"
        try:
            if value is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                fsync_dir(self.secrets_dir)
            else:
                atomic_write(path, value, mode=0o600)
        except OSError as exc:
            raise StorageError(f"cannot save the value of secret {uuid}: {exc.strerror}",
                               exc.errno or errno.EIO) from None

    def delete_secret(self, uuid: str) -> None:
        for suffix in (".value", ".json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.secrets_dir / f"{uuid}{suffix}")
        fsync_dir(self.secrets_dir)

    def _write(self, path: Path, doc: dict, durable: bool = True) -> None:
        try:
            atomic_write(path, json.dumps(doc, indent=1).encode(), durable=durable)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise StorageError(f"cannot save {path}: {exc.strerror}", code) from None
