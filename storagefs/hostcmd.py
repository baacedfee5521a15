"""Run host tools (qemu-img, parted, lvm ...) with a time limit.

The only place that starts processes. Failures become :class:`StorageError`:
a missing binary is ENOTSUP ("qemu-img not installed"), a time-out or a
non-zero exit is EIO with the tool's first useful stderr line, unless the
caller maps a message to a better errno. Secrets are never passed in argv.

Each tool runs in a session of its own (a time-out or a cancellation kills its
whole group) and gets PR_SET_PDEATHSIG(SIGKILL), so a storagefs killed by SIGKILL
leaves no qemu-img writing on. The death signal follows the thread that forked,
and trio's worker threads come and go, so tools are started from the trio thread
itself and their exit is awaited on a pidfd.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from .errors import NotSupported, StorageError, ToolError, ToolTimedOut
from .metrics import TOOLS

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


#: prctl(2): the signal a child gets when the thread that started it dies
PR_SET_PDEATHSIG = 1
#: how long a killed tool is waited for before it is left to a reaper task
REAP_SECONDS = 3.0
#: at most this much of a tool's stderr is kept (its first lines say why it failed)
MAX_STDERR = 65536


@functools.cache
def _prctl():
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: the tool is SIGKILLed when storagefs dies, even by SIGKILL (no
    qemu-img writes on into a temp file nobody will rename). The death signal follows
    the *thread* that forks, so tools are only started from the main (trio) thread."""
    prctl = _prctl()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # storagefs died before the prctl
            os._exit(127)

    return setup


def _kill_group(proc: subprocess.Popen) -> None:
    """On a time-out or cancellation: kill the tool and everything it started."""
    if proc.returncode is not None:
        return  # reaped: its pid may be someone else's by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _exited(proc: subprocess.Popen) -> int:
    """Wait for the tool's exit without a thread (a pidfd is readable once it exits)."""
    if proc.returncode is not None:
        return proc.returncode
    fd = os.pidfd_open(proc.pid)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    return proc.wait()


async def _reap(proc: subprocess.Popen) -> None:
    with contextlib.suppress(Exception):
        await _exited(proc)


async def _drain(stream: trio.lowlevel.FdStream, sink: Callable[[bytes], None]) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            sink(chunk)


async def _feed(stream: trio.lowlevel.FdStream, data: bytes) -> None:
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)


def _spawn(argv: list[str], env: Mapping[str, str], stdin: bytes | None):
    """Start the tool in its own session (its group is killed as one) from this thread;
    returns it with its stdin (None: /dev/null), stdout and stderr as trio streams."""
    fds: list[int] = []
    try:
        out_r, out_w = os.pipe()
        fds += [out_r, out_w]
        err_r, err_w = os.pipe()
        fds += [err_r, err_w]
        in_r = in_w = None
        if stdin is not None:
            in_r, in_w = os.pipe()
            fds += [in_r, in_w]
        main = threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(
            argv, stdin=in_r if in_r is not None else subprocess.DEVNULL, stdout=out_w,
            stderr=err_w, env=env, start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent(os.getpid()) if main else None)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (out_w, err_w, in_r):
        if fd is not None:
            os.close(fd)
    streams = [trio.lowlevel.FdStream(fd) for fd in (out_r, err_r)]
    return proc, (trio.lowlevel.FdStream(in_w) if in_w is not None else None), *streams


async def _run_tool(argv: list[str], env: Mapping[str, str], timeout: float,
                    stdin: bytes | None, on_stdout: Callable[[bytes], None]) -> tuple[int, str]:
    """Run a tool to its end, timed for the metrics (how long, whether it failed)."""
    started, rc = time.monotonic(), None
    try:
        rc, err = await _run_untimed(argv, env, timeout, stdin, on_stdout)
        return rc, err
    finally:
        TOOLS.observe(argv[0], time.monotonic() - started, failed=rc != 0)


async def _run_untimed(argv: list[str], env: Mapping[str, str], timeout: float,
                       stdin: bytes | None, on_stdout: Callable[[bytes], None]) -> tuple[int, str]:
    """Run a tool to its end; (exit status, stderr). A time-out or a cancellation kills
    its process group and waits for it; a time-out raises ToolError."""
    try:
        proc, in_s, out_s, err_s = _spawn(argv, env, stdin)
    except OSError as exc:
        raise ToolError(f"{argv[0]} could not be started: {exc.strerror}") from None
    err = bytearray()

    def keep_err(chunk: bytes) -> None:
        err.extend(chunk[:max(0, MAX_STDERR - len(err))])

    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, out_s, on_stdout)
                nursery.start_soon(_drain, err_s, keep_err)
                if in_s is not None:
                    nursery.start_soon(_feed, in_s, stdin)
                rc = await _exited(proc)
    except BaseException as exc:
        _kill_group(proc)
        with trio.CancelScope(shield=True):
            # a tool sleeping on storage that hangs cannot die until the storage answers:
            # the caller is not kept waiting for that (SPEC "No call waits on storage")
            with trio.move_on_after(REAP_SECONDS):
                await _exited(proc)
            if proc.returncode is None:
                log.warning("%s (pid %d) killed but not gone after %g s: it is waiting on "
                            "storage; reaped when it exits", argv[0], proc.pid, REAP_SECONDS)
                trio.lowlevel.spawn_system_task(_reap, proc)
            for s in (in_s, out_s, err_s):
                if s is not None:
                    await s.aclose()
        if isinstance(exc, trio.TooSlowError):
            raise ToolTimedOut(f"{argv[0]} did not finish within {timeout:g} s") from None
        raise
    return rc, err.decode(errors="replace")


def tool_reason(tool: str, text: str) -> str:
    """The first useful line of a tool's output, without the "qemu-img: " the tool
    put there itself (the error says which tool once, not twice)."""
    line = first_line(text)
    for prefix in (f"{tool}: ", f"{os.path.basename(tool)}: "):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
            break
    return line


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
    out = bytearray()
    rc, stderr = await _run_tool(argv, full_env, limit(timeout), stdin, out.extend)
    res = Result(argv, rc, out.decode(errors="replace"), stderr)
    if check and res.returncode != 0:
        reason = tool_reason(tool, res.stderr) or tool_reason(tool, res.stdout) or \
            f"exit {res.returncode}"
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
    buf = [b""]

    def progress(chunk: bytes) -> None:
        text = (buf[0] + chunk)[-256:]
        for m in pattern.finditer(text):
            report(float(m.group(1)) / 100)
        buf[0] = text[text.rfind(b")") + 1:]

    rc, err = await _run_tool(argv, dict(os.environ, LC_ALL="C"), limit(timeout), None,
                              progress)
    if rc != 0:
        reason = tool_reason(argv[0], err) or f"exit {rc}"
        raise ToolError(f"{os.path.basename(argv[0])}: {reason}")
