"""A real reader of MNT/events for tests: ``cat`` (or another command) with its output
collected line by line in a thread, so a test can wait for a line with a deadline."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path


class Event:
    """One line: TIME KIND NAME EVENT [DETAIL]."""

    def __init__(self, line: str) -> None:
        self.line = line
        parts = line.rstrip("\n").split(" ", 4)
        assert len(parts) >= 4, f"not an event line: {line!r}"
        self.time, self.kind, self.name, self.event = parts[:4]
        self.detail = parts[4] if len(parts) > 4 else ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.name, self.event)

    def __repr__(self) -> str:
        return f"Event({self.line.rstrip()!r})"


class EventReader:
    """``argv`` (default: cat MNT/events) with its stdout read into ``lines``."""

    def __init__(self, mnt: Path, argv: list[str] | None = None) -> None:
        self.argv = argv or ["cat", str(mnt / "events")]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def _take(self, timeout: float) -> bool:
        """One more line into ``lines``; False at the deadline or end of output."""
        try:
            line = self._q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        if line is None:
            self._q.put(None)
            return False
        self.lines.append(line)
        return True

    def events(self) -> list[Event]:
        return [Event(line) for line in self.lines]

    def wait_for(self, kind: str, name: str, event: str, timeout: float = 10) -> Event:
        """The first line (already read or still to come) with this kind, name, event."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events()[seen:]:
                if ev.key == (kind, name, event):
                    return ev
            seen = len(self.lines)
            if not self._take(deadline - time.monotonic()):
                raise AssertionError(f"no '{kind} {name} {event}' within {timeout} s; got:\n"
                                     + "".join(self.lines) + self.stderr_now())

    def opened(self, timeout: float = 10) -> Event:
        """The stream's first line: from here on the reader hears everything."""
        return self.wait_for("storagefs", "events", "opened", timeout)

    def collect(self, seconds: float) -> list[Event]:
        """Everything that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while self._take(deadline - time.monotonic()):
            pass
        return self.events()

    def stderr_now(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self._t.join(timeout=5)
        while self._take(0):
            pass
        return rc

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
