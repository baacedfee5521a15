"""Parsing the one-line commands written to ``control``, ``state`` and ``autostart``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .errors import InvalidArgument

MAX_COMMAND_BYTES = 4096


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " ".join((self.verb, *self.args))


def parse_command(line: str | bytes) -> Command | None:
    """Split one line into a command; None for a blank line (ignored, as in a shell)."""
    if isinstance(line, bytes):
        if len(line) > MAX_COMMAND_BYTES:
            raise InvalidArgument(f"command longer than {MAX_COMMAND_BYTES} bytes")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("command is not valid UTF-8") from None
    if "\0" in line:
        raise InvalidArgument("command contains NUL")
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InvalidArgument(f"cannot parse command {line.strip()!r}: {exc}") from None
    if not words:
        return None
    return Command(words[0].lower(), tuple(words[1:]))


YES = {"yes", "y", "true", "on", "1"}
NO = {"no", "n", "false", "off", "0"}


def parse_yes_no(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    word = text.strip().lower()
    if word in YES:
        return True
    if word in NO:
        return False
    raise InvalidArgument(f"expected yes or no, not {text.strip()!r}")
