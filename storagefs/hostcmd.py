"""Run host tools (qemu-img, parted, lvm ...) with a time limit.

The only place that starts processes. Failures become :class:`StorageError`:
a missing binary is ENOTSUP ("qemu-img not installed"), a time-out or a
non-zero exit is EIO with the tool's first useful stderr line, unless the
caller maps a message to a better errno. Secrets are never passed in argv.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from .errors import NotSupported, StorageError, ToolError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def first_line(text: str) -> str:
    """The first non-empty stderr line that is not a known harmless warning."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("WARNING: Failed to connect to lvmetad",)):
            return line
    return ""


async def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    errno_map: Mapping[str, int] | None = None,
    stdin: bytes | None = None,
) -> Result:
    """Run ``argv`` and return its output; raise StorageError on failure."""
    argv = [str(a) for a in argv]
    tool = argv[0]
    if shutil.which(tool) is None:
        raise NotSupported(f"{os.path.basename(tool)} not installed")
    full_env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    if env:
        full_env.update(env)
    log.debug("running %s", " ".join(argv))
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=full_env,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
            )
    except trio.TooSlowError:
        raise ToolError(f"{tool} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ToolError(f"{tool} could not be started: {exc.strerror}") from None
    res = Result(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                 proc.stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        reason = first_line(res.stderr) or first_line(res.stdout) or f"exit {res.returncode}"
        code = errno.EIO
        for needle, mapped in (errno_map or {}).items():
            if needle in res.stderr or needle in res.stdout:
                code = mapped
                break
        raise ToolError(f"{os.path.basename(tool)}: {reason}", code)
    return res


async def run_json(argv: Sequence[str], **kwargs) -> object:
    """Run a tool that prints JSON (``qemu-img info --output=json``) and parse it."""
    res = await run(argv, **kwargs)
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise StorageError(f"{argv[0]} printed no JSON", errno.EIO) from None
