"""``storagefs import-libvirt``: libvirt's persistent pool definitions into a running
storagefs, keeping each pool's name, uuid and autostart.

It is a client of the tree, not of the core: it does what an administrator would do at
a shell (``mkdir pools/NAME``, write ``config.xml``, ``echo yes > autostart``,
``echo running > state``) and learns every refusal from the errno and the pool's
``error`` file, so it takes exactly the pool types the mount knows.

What libvirt has, read from files (libvirtd need not run):

- ``DIR/*.xml`` (default /etc/libvirt/storage): the definitions, written there by
  ``virsh pool-define`` (a header comment, then the pool document);
- ``DIR/autostart/NAME.xml``: the links ``virsh pool-autostart`` makes (a link there
  is the fact: its absolute target need not resolve where the copy is read, e.g. a
  backup of /etc/libvirt or another mount namespace);
- ``RUN_DIR/NAME.xml`` (default /run/libvirt/storage): the status files libvirtd keeps
  for the pools it runs now.

A pool libvirt runs is started in storagefs too (unless ``--no-start``): after the
import the host is in the state it was in, and the pools guests use stay active once
libvirtd is stopped. Starting what libvirt already runs is safe for every local type
(a filesystem mounted on the target already is taken as it is, a VG is activated
again). A pool that is there already with the same uuid is left as it is, whatever its
state (a second run changes nothing); one whose name or uuid another pool has is
skipped and said why.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from .errors import InvalidArgument, StorageError
from .libvirt_paths import DEFAULT_CONFIG_DIR, DEFAULT_RUN_DIR  # noqa: F401 (re-exported)
from .names import check_name
from .xml.common import parse_uuid
from .xml.pool import rename_document
from .xml.safe import XmlError, parse_document


@dataclass
class LibvirtPool:
    """One persistent pool of libvirt's."""

    name: str
    uuid: str | None
    type: str
    #: what goes to config.xml: libvirt's file without the comment before the root
    document: bytes
    autostart: bool = False
    running: bool = False
    #: why storagefs cannot take its name or uuid (checked before any path is made)
    refused: str = ""


@dataclass
class Outcome:
    name: str
    #: imported, unchanged, skipped (and "would import" / "would skip" in a dry run)
    action: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.action} {self.name}" + (f": {self.detail}" if self.detail else "")

    @property
    def ok(self) -> bool:
        return self.action in ("imported", "unchanged", "would import")


def strip_header(data: bytes) -> bytes:
    """The pool document of a libvirt file: from its root element on, one final newline
    (libvirt writes a "WARNING: THIS IS AN AUTO-GENERATED FILE" comment first)."""
    start = data.find(b"<pool")
    if start < 0:
        raise XmlError("no <pool> element")
    return data[start:].rstrip() + b"\n"


def read_pool(path: Path, autostart_dir: Path, run_dir: Path) -> LibvirtPool:
    """One definition file; XmlError/OSError when it cannot be read."""
    document = strip_header(path.read_bytes())
    root = parse_document(document)
    if root.tag != "pool":
        raise XmlError(f"the root element is <{root.tag}>, not <pool>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise XmlError("the pool has no <name>")
    raw_uuid = (root.findtext("uuid") or "").strip()
    uuid = parse_uuid(raw_uuid) if raw_uuid else None
    pool = LibvirtPool(name=name, uuid=uuid, type=root.get("type", ""), document=document)
    try:  # the name and uuid become paths: nothing is looked up or made before this
        check_name(name, "pool name")
        if raw_uuid and uuid is None:
            raise InvalidArgument(f"uuid {raw_uuid!r} is not a uuid")
    except StorageError as exc:
        pool.refused = exc.reason
        return pool
    pool.autostart = os.path.lexists(autostart_dir / f"{name}.xml")
    pool.running = (run_dir / f"{name}.xml").exists()
    return pool


def read_libvirt(config_dir: str, run_dir: str = DEFAULT_RUN_DIR,
                 ) -> tuple[list[LibvirtPool], list[Outcome]]:
    """libvirt's pools, sorted by name, and an outcome for each file that cannot be
    read. OSError when the directory itself cannot be listed."""
    top = Path(config_dir)
    pools, bad = [], []
    for path in sorted(top.glob("*.xml")):
        try:
            pools.append(read_pool(path, top / "autostart", Path(run_dir)))
        except (OSError, ValueError) as exc:
            bad.append(Outcome(path.stem, "skipped", f"cannot read {path}: {exc}"))
    if not top.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", config_dir)
    return sorted(pools, key=lambda p: p.name), bad


def parse_renames(items: list[str]) -> dict[str, str]:
    """``--rename OLD=NEW`` arguments as a map; ValueError names the bad one. Both
    names must be pool names storagefs takes, each OLD and each NEW given once."""
    renames: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        try:
            if not sep:
                raise InvalidArgument("no '='")
            check_name(old, "pool name")
            check_name(new, "pool name")
        except StorageError as exc:
            raise ValueError(f"--rename takes OLD=NEW (two pool names), not {item!r}: "
                             f"{exc.reason}") from None
        if old in renames or new in renames.values():
            raise ValueError(f"--rename {item!r}: {old if old in renames else new} "
                             "is named twice")
        renames[old] = new
    return renames


# ---- the tree, as a client ------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, data: bytes) -> None:
    """open, write, close with real syscalls: the errno of a refusal surfaces."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _why(pool_dir: Path, exc: OSError) -> str:
    """The pool's error line without its time stamp, else the errno's words."""
    line = _read(pool_dir / "error") or ""
    reason = line.split(" ", 1)[1] if " " in line else line
    op, sep, rest = reason.partition(": ")
    if sep and len(op.split()) <= 2:  # "define: ...", "set state: ..."
        reason = rest
    return reason or os.strerror(exc.errno or errno.EIO)


def _by_uuid(mnt: Path, uuid: str | None) -> str | None:
    if not uuid:
        return None
    try:
        return os.path.basename(os.readlink(mnt / "pools" / "by-uuid" / uuid))
    except OSError:
        return None


def _same_apart_from_uuid(config: Path, document: bytes) -> bool:
    """Whether the pool's ``config.xml`` is ``document`` (which has no uuid), but for
    the uuid storagefs generated when it was defined: a second import of a definition
    without a uuid changes nothing."""
    try:
        current = config.read_bytes()
    except OSError:
        return False
    if current == document:
        return True
    try:
        mine, theirs = parse_document(current), parse_document(document)
    except (XmlError, ValueError):
        return False
    for el in mine.findall("uuid"):
        mine.remove(el)
    return bool(etree.tostring(mine, method="c14n") == etree.tostring(theirs, method="c14n"))


class Importer:
    """Imports into the tree at ``mnt``; ``say`` gets each outcome as it is known."""

    def __init__(self, mnt: str, *, dry_run: bool = False, start: bool = True,
                 renames: dict[str, str] | None = None,
                 say: Callable[[Outcome], None] = lambda o: None) -> None:
        self.mnt = Path(mnt)
        self.dry_run = dry_run
        self.start = start
        self.renames = renames or {}
        self.say = say

    def run(self, pools: list[LibvirtPool], supported: set[str] | None = None,
            ) -> list[Outcome]:
        outcomes = []
        for pool in pools:
            outcome = self.one(pool, supported)
            self.say(outcome)
            outcomes.append(outcome)
        return outcomes

    def one(self, pool: LibvirtPool, supported: set[str] | None = None) -> Outcome:
        if pool.refused:  # before any path is made of the name (--rename takes no such name)
            return Outcome(pool.name, self._skip, pool.refused)
        name = self.renames.get(pool.name, pool.name)
        shown = name if name == pool.name else f"{pool.name} as {name}"
        pools = self.mnt / "pools"
        pool_dir = pools / name
        document = pool.document if name == pool.name else \
            rename_document(pool.document, name)
        if os.path.lexists(pool_dir):
            theirs = _read(pool_dir / "uuid")
            if theirs and (theirs.lower() == pool.uuid if pool.uuid else
                           _same_apart_from_uuid(pool_dir / "config.xml", document)):
                return Outcome(shown, "unchanged", f"already imported (uuid {theirs})")
            held = f"pool '{name}' with uuid {theirs}" if theirs else \
                f"pools/{name} (defined by nothing yet)"
            return Outcome(shown, self._skip, f"the name is taken by {held}; import it "
                           f"under another name with --rename {pool.name}=NEWNAME")
        other = _by_uuid(self.mnt, pool.uuid)
        if other is not None:
            return Outcome(shown, self._skip, f"its uuid {pool.uuid} is pool '{other}''s")
        if self.dry_run:
            if supported is not None and pool.type not in supported:
                return Outcome(shown, "would skip",
                               f"pool type '{pool.type}' is not supported here")
            return Outcome(shown, "would import", self._what(pool))
        try:
            os.mkdir(pool_dir)
        except OSError as exc:
            return Outcome(shown, "skipped", f"mkdir {pool_dir}: {os.strerror(exc.errno)}")
        try:
            _write(pool_dir / "config.xml", document)
        except OSError as exc:
            reason = _why(pool_dir, exc)
            with contextlib.suppress(OSError):
                os.rmdir(pool_dir)  # the pending directory: nothing is left behind
            return Outcome(shown, "skipped", reason)
        notes = [self._what(pool)]
        if pool.autostart:
            try:
                _write(pool_dir / "autostart", b"yes\n")
            except OSError as exc:
                notes.append(f"autostart not set: {_why(pool_dir, exc)}")
        if pool.running and self.start:
            try:
                _write(pool_dir / "state", b"running\n")
                notes.append(_read(pool_dir / "state") or "running")
            except OSError as exc:
                notes.append(f"not started: {_why(pool_dir, exc)}")
        return Outcome(shown, "imported", ", ".join(notes))

    @property
    def _skip(self) -> str:
        return "would skip" if self.dry_run else "skipped"

    def _what(self, pool: LibvirtPool) -> str:
        facts = [pool.type]
        if pool.autostart:
            facts.append("autostart")
        if pool.running:
            facts.append("running in libvirt" if self.dry_run or not self.start else "")
        return " ".join(f for f in facts if f)


def find_mount(mounts_file: str = "/proc/self/mounts") -> list[str]:
    """The mount points of storagefs mounts on this host."""
    found = []
    with open(mounts_file) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] in ("fuse.storagefs", "fuse") and \
                    fields[0] == "storagefs":
                found.append(fields[1].encode().decode("unicode_escape"))
    return found
