"""Refusals on record: one line in the object's ``error`` file, one in the log
(SPEC "Errors are errno, with the reason on record"), and the listener told, so that the
kernel's caches of that object are dropped at once."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import trio

from ..errors import InvalidArgument, StorageError, StorageLost, timed_out
from .events import EventBus
from .objects import Owner, Pool, Secret, Volume

log = logging.getLogger("storagefs.core")

#: what an interrupted operation that said nothing else leaves: each step that is done
#: stays done (documents are stored at once, tools are killed where they stand)
DEFAULT_CUT = ("the operation stopped before it finished; what it had done stays "
               "(status.xml and the one-value files show the state now)")

#: refusals are a normal outcome of bad input, not trouble in storagefs: they are
#: logged at this level, between INFO and WARNING (WARNING and ERROR are kept for
#: what an administrator must look at)
REFUSED = 25
logging.addLevelName(REFUSED, "REFUSED")


class Listener(Protocol):
    """What the FUSE layer (kernel cache invalidation) and the event stream hear."""

    def progress(self, pool: str, volume: str) -> None: ...
    def links_changed(self) -> None: ...
    def changed_dir(self, path: tuple[str, ...]) -> None: ...
    def subtree_changed(self, path: tuple[str, ...]) -> None: ...
    def changed(self, pool: str, volume: str | None = None) -> None: ...
    def added(self, pool: str, volume: str | None = None) -> None: ...
    def removed(self, pool: str, volume: str | None = None) -> None: ...
    def batch(self) -> contextlib.AbstractContextManager[None]: ...


class NullListener:
    def changed(self, pool: str, volume: str | None = None) -> None:
        pass

    added = removed = changed

    def progress(self, pool: str, volume: str) -> None:
        pass

    def changed_dir(self, path: tuple[str, ...]) -> None:
        pass

    def subtree_changed(self, path: tuple[str, ...]) -> None:
        pass

    def links_changed(self) -> None:
        pass

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def one_line(op: str, reason: str) -> str:
    """'op: reason' on one line, whatever it holds (names and documents carry newlines)."""
    text = f"{op}: {reason}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:2000]


def error_line(op: str, reason: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {one_line(op, reason)}\n"


def describe(obj: Owner | None) -> str:
    described = getattr(obj, "description", None)
    if described:  # other objects with an error file (sources/TYPE)
        return described
    if isinstance(obj, Secret):
        return f"secret {obj.uuid}"
    if isinstance(obj, Volume):
        return f"volume {obj.pool.name}/{obj.name}"
    if isinstance(obj, Pool):
        return f"pool {obj.name}"
    return "storagefs"


class Recorder:
    """Turns refusals into error lines; ``listener`` is looked up at each use (the FUSE
    layer sets it once the tree exists)."""

    def __init__(self, listener: Callable[[], Listener], events: EventBus | None = None,
                 lost: Callable[[Owner | None, StorageError, str], None] | None = None,
                 ) -> None:
        self._listener = listener
        #: the event stream (accepted changes); refusals are counted here, by
        #: (object kind, operation, errno name), for the metrics
        self.events = events if events is not None else EventBus()
        self.refusals: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: failures of storagefs's own background work (a rescan after a change seen,
        #: the details of a listing): nobody's operation was refused, so counted apart
        self.failures: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: lost(obj, exc, op): an operation found that the storage of obj's pool is gone
        #: or was replaced (StorageLost): the registry makes the pool inaccessible
        self.lost = lost
        #: what an operation cut short by a signal left, by id of its object (set by the
        #: operation as it is cancelled, taken by the FUSE layer's EINTR line)
        self._cut: dict[int, str] = {}

    @contextlib.contextmanager
    def if_cut_short(self, obj: Owner, left: str) -> Iterator[None]:
        """While the block runs: a cancellation (Ctrl-C on the writer) leaves ``left``
        (what the operation leaves behind, said truthfully) for interrupted()."""
        try:
            yield
        except BaseException as exc:
            # a nursery below may carry the cancellation in an exception group
            if isinstance(exc, trio.Cancelled) or (
                    isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1]
                    is None):
                self._cut[id(obj)] = left
            raise

    def interrupted(self, obj: Owner | None) -> None:
        """The error line of a write cut short by a signal: what the operation left."""
        left = self._cut.pop(id(obj), None) if obj is not None else None
        self.note_refusal(obj, "write", StorageError(
            "interrupted by a signal: " + (left or DEFAULT_CUT), errno.EINTR))

    @contextlib.contextmanager
    def recording(self, obj: Owner | None, op: str) -> Iterator[None]:
        """Turn a refusal into: one line in obj.error, one log line, a StorageError."""
        if obj is not None:
            self._cut.pop(id(obj), None)  # what an earlier operation was cut short at
        try:
            try:
                yield
            except ValueError as exc:  # XmlError and size parsing
                raise InvalidArgument(str(exc)) from None
        except StorageError as exc:
            if (isinstance(exc, StorageLost) or timed_out(exc)) and \
                    not exc.recorded and self.lost is not None:
                # gone, replaced, or not answering within the time limit: inaccessible
                self.lost(obj, exc, op)
            if not exc.recorded:
                self.note_refusal(obj, op, exc)
            raise

    def note_refusal(self, obj: Owner | None, op: str, exc: StorageError,
                     line: bool = True, background: bool = False) -> None:
        """One line in the object's error file, one in the log. ``line=False``: the log
        only (a refused read: error lines are for refused changes, SPEC "Errors are
        errno", and a reader such as tar must not see the tree change under it).
        ``background``: storagefs's own work failed (counted in failures, not refusals)."""
        exc.recorded = True
        (self.failures if background else self.refusals)[self._kind(obj, op, exc)] += 1
        log.log(REFUSED, "%s: refused %s", describe(obj), one_line(op, exc.reason))
        if obj is not None and line:
            self.set_error(obj, error_line(op, exc.reason))

    def count_failure(self, obj: Owner | None, op: str, exc: StorageError) -> None:
        """Count a failure of background work whose line is set elsewhere."""
        self.failures[self._kind(obj, op, exc)] += 1

    @staticmethod
    def _kind(obj: Owner | None, op: str, exc: StorageError) -> tuple[str, str, str]:
        return (describe(obj).split()[0], (op.split() or ["?"])[0],
                errno.errorcode.get(exc.errno, str(exc.errno)))

    def set_error(self, obj: Owner, line: str) -> None:
        obj.error = line
        obj.touch()
        self.notify_changed(obj)

    def notify_changed(self, obj: Owner) -> None:
        listener = self._listener()
        path = getattr(obj, "tree_path", None)
        if path is not None:  # an object that says where it is shown (sources/TYPE)
            listener.changed_dir(path)
        elif isinstance(obj, Secret):
            listener.changed_dir(("secrets", obj.uuid))
        elif isinstance(obj, Volume):
            listener.changed(obj.pool.name, obj.name)
        else:
            listener.changed(obj.name)
