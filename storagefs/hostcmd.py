"""Run host tools (qemu-img, parted, lvm ...) with a time limit.

The only place that starts processes. Failures become :class:`StorageError`:
a missing binary is ENOTSUP ("qemu-img not installed"), a time-out or a
non-zero exit is EIO with the tool's first useful stderr line, unless the
caller maps a message to a better errno. Secrets are never passed in argv.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from .errors import NotSupported, StorageError, ToolError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


def limit(timeout: float) -> float:
    """The time limit for a tool: ``timeout``, capped by $STORAGEFS_TOOL_TIMEOUT (seconds)
    when set (for hosts whose tools must answer faster, and for tests)."""
    cap = os.environ.get("STORAGEFS_TOOL_TIMEOUT")
    try:
        return min(timeout, float(cap)) if cap else timeout
    except ValueError:
        return timeout


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


async def _kill_group(proc: trio.Process) -> None:
    """On a time-out or cancellation: kill the tool and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


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
    timeout = limit(timeout)
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=full_env,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                start_new_session=True,
                deliver_cancel=_kill_group,
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


async def run_progress(argv: Sequence[str], pattern, report, *, timeout: float) -> None:
    """Run a tool that prints progress (``qemu-img convert -p``): ``report(fraction)``
    for each match of ``pattern`` (a bytes regex whose group 1 is a percentage).
    Killed when cancelled or too slow; a non-zero exit raises ToolError."""
    argv = [str(a) for a in argv]
    if shutil.which(argv[0]) is None:
        raise NotSupported(f"{os.path.basename(argv[0])} not installed")
    log.debug("running %s", " ".join(argv))
    timeout = limit(timeout)
    env = dict(os.environ, LC_ALL="C")
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=env, start_new_session=True)
    err = bytearray()

    async def drain_stderr() -> None:
        async for chunk in proc.stderr:
            err.extend(chunk[:4096])

    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_stderr)
                buf = b""
                async for chunk in proc.stdout:
                    buf = (buf + chunk)[-256:]
                    for m in pattern.finditer(buf):
                        report(float(m.group(1)) / 100)
                    buf = buf[buf.rfind(b")") + 1:]
                await proc.wait()
    except trio.TooSlowError:
        await _kill_group(proc)
        raise ToolError(f"{argv[0]} did not finish within {timeout:g} s") from None
    except BaseException:
        await _kill_group(proc)
        with trio.CancelScope(shield=True):
            await proc.wait()
        raise
    if proc.returncode != 0:
        reason = first_line(err.decode(errors="replace")) or f"exit {proc.returncode}"
        raise ToolError(f"{os.path.basename(argv[0])}: {reason}")
