"""secrets/ and secrets/UUID/{config.xml,value,error}. A value is 0600 (0200 and
unreadable, for everyone, when the secret is private) and appears in no other file."""

from __future__ import annotations

from typing import Any

from ..core.objects import Secret
from ..errors import NotFound
from ..state import FileMeta
from .files import DocumentFile
from .handles import Handle, Scratch, ValueHandle
from .node import Caller, Dir, File, Generated, Node
from .objdir import ObjectDir

SECRET_FILES = ("config.xml", "value", "error")


class SecretsDir(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return sorted(self.t.core.secrets)

    def child(self, name: str, caller: Caller) -> Node:
        s = self.t.core.secrets.get(name)
        if s is None:
            raise NotFound(name)
        return SecretDir(self.t, (*self.path, name), s)

    def mtime_ns(self) -> int:
        return self.t.core.secrets.by_uuid.names_ns  # moves when a secret comes or goes

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        self.t.core.secrets.mkdir(name)
        return self.child(name, caller)

    async def rmdir(self, name: str, caller: Caller) -> None:
        self.child(name, caller)
        await self.t.core.secrets.undefine(name)


class _OfSecret:
    __slots__ = ()
    secret: Secret

    def key(self) -> tuple[Any, ...]:
        return (self.secret,)

    def owner(self) -> Any:
        return self.secret

    def alive(self) -> bool:
        return self.t.core.secrets.get(self.secret.uuid) is self.secret  # type: ignore


class SecretDir(_OfSecret, ObjectDir):
    __slots__ = ("secret",)

    def __init__(self, t, path, secret: Secret) -> None:
        super().__init__(t, path)
        self.secret = secret

    def object_names(self) -> list[str]:
        s = self.secret
        if s.definition is not None:
            return list(SECRET_FILES)
        return ["config.xml", "error"] if s.error else ["config.xml"]

    def object_child(self, name: str) -> Node:
        s, path = self.secret, (*self.path, name)
        if name == "config.xml":
            return SecretConfig(self.t, path, s)
        if name == "error" and (s.definition is not None or s.error):
            return SecretError(self.t, path, s)
        if name == "value" and s.definition is not None:
            return SecretValue(self.t, path, s)
        raise NotFound(name)


class SecretConfig(_OfSecret, DocumentFile):
    __slots__ = ("secret",)

    def __init__(self, t, path, secret: Secret) -> None:
        super().__init__(t, path)
        self.secret = secret

    def render(self) -> bytes:
        return self.secret.config

    async def apply(self, data: bytes, meta: FileMeta | None) -> None:
        await self.t.core.secrets.define(self.secret.uuid, data, meta)


class SecretError(_OfSecret, Generated):
    __slots__ = ("secret",)

    def __init__(self, t, path, secret: Secret) -> None:
        super().__init__(t, path)
        self.secret = secret

    def render(self) -> bytes:
        return self.secret.error.encode()


class SecretValue(_OfSecret, File):
    writable = True
    __slots__ = ("secret",)

    def __init__(self, t, path, secret: Secret) -> None:
        super().__init__(t, path)
        self.secret = secret

    def alive(self) -> bool:
        return _OfSecret.alive(self) and self.secret.definition is not None

    def mode(self) -> int:
        return 0o200 if self.secret.private else 0o600

    def content(self) -> bytes:
        s = self.secret
        return b"" if s.private else (s.value or b"")

    def readable(self) -> bool:
        return not self.secret.private

    async def apply(self, data: bytes) -> None:
        await self.t.core.secrets.set_value(self.secret.uuid, data)

    def open_write(self, caller: Caller) -> Handle:
        return ValueHandle(self.apply)

    async def replace_with(self, scratch: Scratch) -> None:
        await self.apply(bytes(scratch.data))
