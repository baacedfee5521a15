"""What the state directory holds, as values: a pool's, a volume's and a secret's record,
file metadata kept for config.xml, and the checks that read a record back (a record that
fails them is kept aside as broken, see state.StateDir)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import time
import uuid as uuidlib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .durable import read_record
from .errors import StorageError
from .names import MAX_NAME_BYTES, check_name, fit_name

log = logging.getLogger(__name__)

BROKEN = ".broken"


@dataclass(slots=True)
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
    new = dataclasses.replace(given if given is not None else old)
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
    #: why the record could not be used ("" when it is fine); config holds what
    #: could be salvaged from it
    broken: str = ""


@dataclass
class StoredVolume:
    pool: str
    name: str
    #: the accepted config.xml; None when only the format is on record
    config: bytes | None
    meta: FileMeta = field(default_factory=FileMeta)
    #: the format storagefs made the volume with or was told (None in older records)
    format: str | None = None
    broken: str = ""
    #: see objects.Volume.made
    made: list[int] | None = None


@dataclass
class StoredSecret:
    uuid: str
    config: bytes
    meta: FileMeta = field(default_factory=FileMeta)
    value: bytes | None = None
    broken: str = ""


def record_name(name: str) -> str:
    """The file name of an object's record: NAME.json, its temp file .NAME.json.tmp;
    a name too long for that is shortened (names.fit_name: the record itself holds
    the name)."""
    return fit_name(name, MAX_NAME_BYTES - len(".json") - len("..tmp") - len(BROKEN)) + ".json"


def encode_bytes(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def decode_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class BadRecord(ValueError):
    """A record that cannot be used; ``salvage`` holds the fields that were fine."""

    def __init__(self, reason: str, salvage: dict | None = None) -> None:
        super().__init__(reason)
        self.salvage = salvage or {}


def load_json(path: Path) -> dict:
    try:
        data = read_record(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadRecord("it is a symbolic link (not followed)") from None
        raise BadRecord(exc.strerror or str(exc)) from None
    if not data:
        raise BadRecord("it is empty")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord(f"not valid JSON ({len(data)} bytes; truncated?): {exc}") from None
    if not isinstance(raw, dict):
        raise BadRecord("not a JSON object")
    return raw


def field_of(raw: dict, key: str, kind: type, default=None, required: bool = True):
    if key not in raw:
        if required:
            raise BadRecord(f"field '{key}' is missing", salvage(raw))
        return default
    value = raw[key]
    if type(value) is not kind:  # bool is not an int here
        raise BadRecord(f"field '{key}' is {type(value).__name__}, not {kind.__name__}",
                        salvage(raw))
    return value


def salvage(raw: dict) -> dict:
    return {"config": raw["config"]} if isinstance(raw.get("config"), str) else {}


def meta_of(raw: dict) -> FileMeta:
    given = field_of(raw, "meta", dict, {}, required=False)
    names = {f.name for f in fields(FileMeta)}
    for key, value in given.items():
        if key not in names or type(value) is not int:
            raise BadRecord(f"meta field '{key}' is not a known integer field", salvage(raw))
    return FileMeta(**given)


def uuid_of(raw: dict) -> str:
    value = field_of(raw, "uuid", str)
    try:
        ok = str(uuidlib.UUID(value)) == value
    except ValueError:
        ok = False
    if not ok:
        raise BadRecord(f"uuid {value[:80]!r} is not a canonical UUID", salvage(raw))
    return value


def named_in(raw: dict, stem: str) -> str:
    """The object's name in a record found as STEM.json (long names are shortened in
    file names: see record_name)."""
    name = field_of(raw, "name", str)
    if record_name(name) != f"{stem}.json":
        raise BadRecord(f"it names '{name[:300]}', not '{stem}'", salvage(raw))
    return name


def stem_of(entry: Path, suffix: str) -> str | None:
    name = entry.name[:-len(suffix)]
    try:
        return check_name(name)
    except StorageError:
        log.error("ignoring %s: '%s' is not a valid name", entry, name)
        return None
