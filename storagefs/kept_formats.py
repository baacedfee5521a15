"""The recorded formats of an undefined pool's volumes, kept by the storage they are on.

A volume keeps the format storagefs made it with (the volume records in the state
directory): what a guest writes into it never makes it a qcow2 (SPEC "Never trust guest
bytes"). ``rmdir pools/P`` removes P's records; if a pool is defined again on the same
storage (the same target directory, or the same source), its files would be probed
afresh and a guest-written header would choose their format. So undefine keeps the
formats here, one file per storage (``STATE/kept-formats/HASH.json``), and the next
definition of a pool on that storage takes them back as its volume records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .durable import failed, prepare_write, remove_file
from .records import BadRecord, load_json


class KeptFormats:
    def __init__(self, state_path: Path) -> None:
        self.dir = state_path / "kept-formats"

    def _path(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".json")

    def take(self, key: str) -> dict[str, str]:
        """The formats kept for the storage ``key`` ({} when none or unreadable)."""
        path = self._path(key)
        if not path.exists():
            return {}
        try:
            raw = load_json(path)
        except BadRecord:
            return {}
        formats = raw.get("formats") if raw.get("key") == key else None
        if not isinstance(formats, dict):
            return {}
        return {n: f for n, f in formats.items() if isinstance(n, str) and isinstance(f, str)}

    def keep(self, key: str, formats: dict[str, str]) -> None:
        """Add ``formats`` to those kept for ``key`` (durably; StorageError if not)."""
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise failed(f"cannot save {self.dir}", exc) from None
        merged = {**self.take(key), **formats}
        doc = {"key": key, "formats": merged}
        prepare_write(self._path(key), json.dumps(doc, indent=0).encode()).commit()

    def drop(self, key: str) -> None:
        path = self._path(key)
        if os.path.lexists(path):
            remove_file(path)
