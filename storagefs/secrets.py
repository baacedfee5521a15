"""Secrets: libvirt secret XML plus a value (CHAP passwords, LUKS passphrases).

A value lives in memory and, unless the secret is ephemeral, in
STATE/secrets/UUID.value (0600, in a 0700 directory). It never goes into a log
line, an error message, another file of the tree, or a process argument:
host tools get it through a 0600 file that exists only while they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .errors import Exists, InvalidArgument, NotFound, NotPermitted, from_oserror
from .objects import new_meta, now_ns
from .state import FileMeta, merge_meta

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 64 * 1024


@dataclass(eq=False)
class Secret:
    uuid: str
    definition: object | None = None   # xml.secret.SecretDef once a document is accepted
    config: bytes = b""
    meta: FileMeta = field(default_factory=new_meta)
    value: bytes | None = None
    error: str = ""
    changed_ns: int = field(default_factory=now_ns)
    #: bumped by every change: generated files are rendered again only when it moves
    version: int = 0
    #: why the stored record could not be used at start ("" when it could)
    broken: str = ""

    @property
    def private(self) -> bool:
        return bool(getattr(self.definition, "private", False))

    @property
    def ephemeral(self) -> bool:
        return bool(getattr(self.definition, "ephemeral", False))

    def touch(self) -> None:
        self.changed_ns = now_ns()
        self.version += 1


def canonical_uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise InvalidArgument(f"'{text}' is not a UUID: a secret's directory is its UUID") \
            from None


class SecretOps:
    secrets: dict[str, Secret]

    def load_secrets(self: Manager) -> None:
        from .manager import error_line
        from .xml.secret import parse_secret

        self.secrets = {}
        for rec in self.state.load_secrets():
            s = Secret(rec.uuid, None, rec.config, rec.meta, rec.value, broken=rec.broken)
            self.secrets[rec.uuid] = s
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

    def secret(self: Manager, uid: str) -> Secret:
        s = self.secrets.get(uid)
        if s is None:
            raise NotFound(f"no secret with matching uuid '{uid}'")
        return s

    def mkdir_secret(self: Manager, name: str) -> Secret:
        with self.recording(None, f"mkdir secrets/{name}"):
            uid = canonical_uuid(name)
            if uid != name:
                raise InvalidArgument(f"write the UUID in its canonical form: {uid}")
            if uid in self.secrets:
                raise Exists(f"secret {uid} already exists")
            s = Secret(uid)
            self.secrets[uid] = s
        return s

    async def define_secret(self: Manager, uid: str, data: bytes,
                            meta: FileMeta | None = None) -> bool:
        from .xml.secret import parse_secret

        s = self.secret(uid)
        with self.recording(s, "define"):
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
            for other in self.secrets.values():
                d = other.definition
                if other is not s and d is not None and defn.usage_type and \
                        (d.usage_type, d.usage_id) == (defn.usage_type, defn.usage_id):
                    raise Exists(f"secret {other.uuid} already has usage "
                                 f"{defn.usage_type} {defn.usage_id}")
            new_meta = merge_meta(s.meta, meta, content_changed=True)
            self._store_secret(s, defn, data, new_meta)
            s.definition, s.config, s.meta = defn, data, new_meta
            if s.broken:
                self.state.delete_secret_aside(uid)
                s.broken = ""
            s.touch()
        return True

    def _store_secret(self: Manager, s: Secret, defn, data: bytes, meta: FileMeta) -> None:
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

    async def set_secret_value(self: Manager, uid: str, value: bytes) -> None:
        s = self.secret(uid)
        with self.recording(s, "set value"):
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

    async def undefine_secret(self: Manager, uid: str) -> None:
        s = self.secret(uid)
        with self.recording(s, "undefine"):
            self.state.delete_secret(uid)
            del self.secrets[uid]

    @contextlib.asynccontextmanager
    async def secret_file(self: Manager, uid: str) -> AsyncIterator[str]:
        """The value in a 0600 file that exists only while the block runs
        (qemu-img --object secret,file=...)."""
        s = self.secret(uid)
        if s.value is None:
            raise NotFound(f"secret {uid} has no value")
        run_dir = self.state.path / "run"
        what = f"cannot pass secret {uid} to the tool through {run_dir}"
        try:
            run_dir.mkdir(mode=0o700, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=run_dir, prefix=".secret-")
        except OSError as exc:
            raise from_oserror(exc, what) from None
        try:
            try:
                view = memoryview(s.value)
                while view:  # all of it: a short write on a full disk is continued
                    view = view[os.write(fd, view):]
            except OSError as exc:
                raise from_oserror(exc, what) from None
            finally:
                os.close(fd)
            yield path
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                os.unlink(path)

    @contextlib.asynccontextmanager
    async def optional_secret_file(self: Manager, uid: str | None) -> AsyncIterator[str | None]:
        if uid is None:
            yield None
            return
        async with self.secret_file(uid) as path:
            yield path
