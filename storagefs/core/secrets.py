"""Secrets: libvirt secret XML plus a value (CHAP passwords, LUKS passphrases, Ceph keys).

A value lives in memory and, unless the secret is ephemeral, in
STATE/secrets/UUID.value (0600, in a 0700 directory). It never goes into a log
line, an error message, another file of the tree, or a process argument:
host tools get it through a 0600 file that exists only while they run.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from .. import secrettmp
from ..errors import Exists, InvalidArgument, NotFound, NotPermitted
from ..state import FileMeta, StateDir, merge_meta
from ..xml.secret import parse_secret
from .objects import NameTable, Secret
from .recording import Recorder, error_line

if TYPE_CHECKING:
    from ..xml.common import SecretRef

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 64 * 1024


def canonical_uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise InvalidArgument(f"'{text}' is not a UUID: a secret's directory is its UUID") \
            from None


class SecretStore:
    """The secrets by uuid (``get``, ``in``, iteration as a dict of uuids)."""

    def __init__(self, state: StateDir, recorder: Recorder) -> None:
        self.state = state
        self.rec = recorder
        self.by_uuid: NameTable = NameTable()  # uuid -> Secret

    # ---- as a mapping ----------------------------------------------------------
    def get(self, uid: str) -> Secret | None:
        return self.by_uuid.get(uid)

    def __contains__(self, uid: str) -> bool:
        return uid in self.by_uuid

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_uuid)

    def values(self):
        return self.by_uuid.values()

    def load(self) -> None:
        self.by_uuid = NameTable()
        for rec in self.state.load_secrets():
            s = Secret(rec.uuid, None, rec.config, rec.meta, rec.value, broken=rec.broken)
            self.by_uuid[rec.uuid] = s
            if not s.broken:
                try:
                    s.definition = parse_secret(rec.config)
                except ValueError as exc:
                    s.broken = f"stored definition unusable: {exc}"
                    log.error("secret %s: %s", rec.uuid, s.broken)
            if s.broken:
                # shown (config.xml and error) so that nothing vanishes: a new document
                # defines it again (keeping its value), rmdir drops it
                s.error = error_line("load", s.broken)

    def secret(self, uid: str) -> Secret:
        s = self.by_uuid.get(uid)
        if s is None:
            raise NotFound(f"no secret with matching uuid '{uid}'")
        return s

    def resolve(self, ref: SecretRef, usage_type: str) -> Secret:
        """The secret a document names, by uuid or by usage (``<secret usage='...'/>``)."""
        if ref.uuid:
            return self.secret(ref.uuid)
        for s in self.by_uuid.values():
            d = s.definition
            if d is not None and d.usage_type == usage_type and d.usage_id == ref.usage:
                return s
        raise NotFound(f"no secret with usage {usage_type} '{ref.usage}'")

    # ---- the tree's operations ----------------------------------------------------
    def mkdir(self, name: str) -> Secret:
        with self.rec.recording(None, f"mkdir secrets/{name}"):
            uid = canonical_uuid(name)
            if uid != name:
                raise InvalidArgument(f"write the UUID in its canonical form: {uid}")
            if uid in self.by_uuid:
                raise Exists(f"secret {uid} already exists")
            s = Secret(uid)
            self.by_uuid[uid] = s
        return s

    async def define(self, uid: str, data: bytes, meta: FileMeta | None = None) -> bool:
        s = self.secret(uid)
        with self.rec.recording(s, "define"):
            if s.definition is not None and data == s.config:
                if meta is not None:
                    new_meta = merge_meta(s.meta, meta, content_changed=False)
                    if not s.ephemeral:
                        self.state.save_secret(uid, s.config, new_meta)
                    s.meta = new_meta
                return False
            defn = parse_secret(data)
            if defn.uuid is not None and defn.uuid != uid:
                raise InvalidArgument(f"uuid {defn.uuid} in the document does not match the "
                                      f"directory {uid}")
            defn.uuid = uid
            old = s.definition
            if old is not None and old.private and not defn.private:
                raise NotPermitted("a private secret cannot be made readable")
            for other in self.by_uuid.values():
                d = other.definition
                if other is not s and d is not None and defn.usage_type and \
                        (d.usage_type, d.usage_id) == (defn.usage_type, defn.usage_id):
                    raise Exists(f"secret {other.uuid} already has usage "
                                 f"{defn.usage_type} {defn.usage_id}")
            new_meta = merge_meta(s.meta, meta, content_changed=True)
            self._store(s, defn, data, new_meta)
            s.definition, s.config, s.meta = defn, data, new_meta
            if s.broken:
                self.state.delete_secret_aside(uid)
                s.broken = ""
            s.touch()
            self.rec.events.of(s, "defined", f"usage={defn.usage_type or 'none'}")
        return True

    def _store(self, s: Secret, defn, data: bytes, meta: FileMeta) -> None:
        """Record a new definition (before memory changes): an ephemeral one leaves no
        file; a persistent one writes its record, and its value when that was only in
        memory (both written in full before either is put in place)."""
        if getattr(defn, "ephemeral", False):
            self.state.delete_secret(s.uuid)
            return
        record = self.state.prepare_secret(s.uuid, data, meta)
        value = None
        if s.value is not None and (s.definition is None or s.ephemeral):
            try:
                value = self.state.prepare_secret_value(s.uuid, s.value)
            except BaseException:
                record.abort()
                raise
        if value is not None:
            value.commit()
        record.commit()

    def set_meta(self, s: Secret, meta: FileMeta) -> None:
        with self.rec.recording(s, "setattr config.xml"):
            if s.definition is not None and not s.ephemeral:
                self.state.save_secret(s.uuid, s.config, meta)
            s.meta = meta
        self.rec.notify_changed(s)

    async def set_value(self, uid: str, value: bytes) -> None:
        s = self.secret(uid)
        with self.rec.recording(s, "set value"):
            if s.definition is None:
                raise NotFound(f"secret {uid} has no definition yet: write config.xml first")
            if len(value) > MAX_VALUE_BYTES:
                raise InvalidArgument(f"a secret value holds at most {MAX_VALUE_BYTES} bytes")
            if value.endswith(b"\n"):
                value = value[:-1]  # echo's newline is not part of a passphrase
            if value == s.value:
                return
            if not s.ephemeral:
                self.state.save_secret_value(uid, value)
            s.value = value
            s.touch()
            self.rec.events.of(s, "value-changed")

    async def undefine(self, uid: str) -> None:
        s = self.secret(uid)
        with self.rec.recording(s, "undefine"):
            self.state.delete_secret(uid)
            del self.by_uuid[uid]
            self.rec.events.of(s, "undefined")

    # ---- values for host tools ------------------------------------------------------
    @contextlib.asynccontextmanager
    async def value_file(self, uid: str) -> AsyncIterator[str]:
        """The value in a 0600 file that exists only while the block runs
        (qemu-img --object secret,file=..., rbd --keyfile, iscsi CHAP)."""
        s = self.secret(uid)
        if s.value is None:
            raise NotFound(f"secret {uid} has no value")
        async with secrettmp.secret_file(s.value, what=f"cannot pass secret {uid} to "
                                         "the tool") as path:
            yield path

    @contextlib.asynccontextmanager
    async def optional_file(self, uid: str | None) -> AsyncIterator[str | None]:
        if uid is None:
            yield None
            return
        async with self.value_file(uid) as path:
            yield path
