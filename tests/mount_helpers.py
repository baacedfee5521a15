"""Helpers for the real-mount tests: start/stop a storagefs process, run real
commands against the tree, build pool/volume XML, compare with the conformance
corpus.

Everything lives under pytest's tmp_path; nothing here touches host disks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lxml import etree

MOUNT_TIMEOUT = 15.0
# a test still running after this long has hung in FUSE: the server is killed
TEST_DEADLINE = float(os.environ.get("STORAGEFS_TEST_DEADLINE", "180"))
GiB = 1024**3
MiB = 1024**2

FUSE_AVAILABLE = os.path.exists("/dev/fuse")


# --------------------------------------------------------------------------
# locating things


def storagefs_cmd() -> list[str]:
    """The storagefs CLI of this venv (or PATH)."""
    exe = Path(sys.prefix) / "bin" / "storagefs"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("storagefs")
    if found:
        return [found]
    raise RuntimeError("storagefs CLI not found (is the package installed in this venv?)")


def fusermount() -> str:
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


def shared_dir() -> Path:
    env = os.environ.get("STORAGEFS_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not (path / "conformance").is_dir():
        raise AssertionError(f"shared directory with conformance/ not found at {path}")
    return path


def conformance(*parts: str) -> Path:
    path = shared_dir().joinpath("conformance", *parts)
    if not path.exists():
        raise AssertionError(f"conformance file missing: {path}")
    return path


# --------------------------------------------------------------------------
# the mount


def is_mounted(path: Path) -> bool:
    """True if `path` is a mountpoint in /proc/self/mountinfo (also when dead)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].encode().decode("unicode_escape")
            if mp == target:
                return True
    return False


def mount_options(path: Path) -> str:
    """Mount and super options of the mount at `path` (last one wins)."""
    target = os.path.realpath(path)
    opts = ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == target:
                sep = fields.index("-")
                opts = fields[5] + "," + fields[sep + 3]
    return opts


class Mount:
    """One storagefs instance on tmp_path/mnt with state in tmp_path/state."""

    def __init__(self, base: Path, env: dict | None = None, name: str = "mnt"):
        self.base = base
        self.mnt = base / name
        self.state_dir = base / "state"
        self.log_path = base / f"storagefs-{name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.killed = False
        self.mnt.mkdir(exist_ok=True)

    # convenience paths
    @property
    def pools(self) -> Path:
        return self.mnt / "pools"

    @property
    def images(self) -> Path:
        return self.state_dir / "images"

    def pool(self, name: str = "default") -> Path:
        return self.mnt / "pools" / name

    def vol(self, vol: str, pool: str = "default") -> Path:
        return self.mnt / "pools" / pool / "volumes" / vol

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *extra: str) -> None:
        assert not self.alive(), "storagefs already running"
        self.killed = False
        argv = [
            *storagefs_cmd(), "mount", str(self.mnt), "--state-dir", str(self.state_dir),
            "--foreground", "--log-level", "debug", *extra,
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"=== {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Poll until the tree answers, failing fast if the server died. Only
        /proc/self/mountinfo is read in this thread: a stat of a mount whose
        server does not answer would block, so README is probed in a helper
        thread with a time limit."""
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.cleanup()
                raise AssertionError(
                    f"storagefs exited with {rc} before the mount was ready; log:\n{self.log()}"
                )
            if is_mounted(self.mnt) and probe_exists(self.mnt / "README", timeout=1.0):
                return
            time.sleep(0.02)
        self.cleanup()
        raise AssertionError(f"mount not ready within {MOUNT_TIMEOUT}s; log:\n{self.log()}")

    def arm_watchdog(self, seconds: float) -> None:
        """SIGKILL the server if the test is still running after `seconds`: a
        syscall stuck in FUSE then returns ENOTCONN instead of hanging the suite."""
        self.watchdog_fired = False

        def fire():
            if self.alive():
                self.watchdog_fired = True
                self.killed = True
                self.proc.send_signal(signal.SIGKILL)

        self._watchdog = threading.Timer(seconds, fire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def disarm_watchdog(self) -> None:
        if getattr(self, "_watchdog", None):
            self._watchdog.cancel()

    def unmount_cmd(self, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*storagefs_cmd(), "unmount", str(self.mnt)],
            capture_output=True, text=True, timeout=timeout, env=self.env,
        )

    def stop(self) -> None:
        """Clean unmount: `storagefs unmount` exits 0 and so does the server."""
        res = self.unmount_cmd()
        assert res.returncode == 0, (
            f"storagefs unmount exited {res.returncode}: {res.stderr}\nlog:\n{self.log()}"
        )
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"storagefs still running 15 s after unmount; log:\n{self.log()}"
            ) from None
        assert rc == 0, f"storagefs exited with {rc}; log:\n{self.log()}"
        assert not is_mounted(self.mnt), "mountpoint still mounted after unmount"

    def kill(self) -> None:
        """SIGKILL the server, leaving a dead mountpoint behind."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)

    def recover(self) -> None:
        """`storagefs unmount` on a dead mountpoint: exit 0, mountpoint free."""
        res = self.unmount_cmd()
        assert res.returncode == 0, (
            f"storagefs unmount of a dead mount exited {res.returncode}: {res.stderr}"
        )
        assert not is_mounted(self.mnt), "dead mountpoint still mounted after unmount"

    def remount(self, *extra: str) -> None:
        self.stop()
        self.start(*extra)

    def cleanup(self) -> None:
        """Failure path: lazy unmount, then terminate/kill our own process."""
        for _ in range(3):
            if not is_mounted(self.mnt):
                break
            subprocess.run([fusermount(), "-u", "-z", str(self.mnt)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def probe_exists(path: Path, timeout: float) -> bool:
    """os.path.exists in a helper thread; False if it does not answer in time."""
    result = []
    t = threading.Thread(target=lambda: result.append(os.path.exists(path)), daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def cmdlines():
    """(pid, argv as bytes) of every process but this one."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                yield int(entry), f.read().split(b"\0")
        except OSError:
            continue


def processes_naming(mark: bytes) -> list[int]:
    """Processes (not pytest) whose command line names ``mark`` (a tool a storagefs
    started, say, with a path under a test's directory)."""
    return [pid for pid, args in cmdlines()
            if any(mark in a for a in args) and b"pytest" not in b" ".join(args)]


def daemon_pids_for(mnt: Path) -> list[int]:
    """PIDs of storagefs processes whose command line names `mnt` (ours only)."""
    want = os.fsencode(str(mnt))
    return [pid for pid, args in cmdlines()
            if want in args and any(b"storagefs" in a for a in args[:3])]


def force_cleanup(mnt: Path) -> None:
    """Failure path for mounts not started through Mount (daemon mode, refusals)."""
    for _ in range(3):
        if not is_mounted(mnt):
            break
        subprocess.run([fusermount(), "-u", "-z", str(mnt)], capture_output=True)
    for pid in daemon_pids_for(mnt):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_mount_expect_refusal(argv: list[str], mnt: Path, timeout: float = 15):
    """Run a `storagefs mount` that must be refused. Returns (rc, stderr).

    If it is (wrongly) accepted and keeps running, the mount is torn down and
    rc is None.
    """
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        force_cleanup(mnt)
        return None, err
    if proc.returncode == 0:
        force_cleanup(mnt)
    return proc.returncode, err


# --------------------------------------------------------------------------
# running things


def answer_within(fn, seconds: float):
    """(answered, ("ok", result) | ("err", OSError)) of fn() run in a helper thread that
    is given ``seconds``: a call on hung storage must not hang the test with it."""
    box: list = []

    def work():
        try:
            box.append(("ok", fn()))
        except OSError as exc:
            box.append(("err", exc))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    return bool(box), (box[0] if box else None)


def run(argv, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    res = subprocess.run([str(a) for a in argv], timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{argv} exited {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
        )
    return res


def sh(script: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run `script` with bash -c (as a user types it)."""
    return run(["bash", "-c", script], check=check, timeout=timeout, **kw)


def read(path: Path | str) -> str:
    with open(path) as f:
        return f.read()


def read_bytes(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: Path | str, data: bytes | str, flags: int = os.O_WRONLY | os.O_TRUNC) -> None:
    """open/write/close with real syscalls, so the errno of each surfaces."""
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, flags)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """write() until all is written, as cat/cp do after a short write."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_errno(path: Path | str, data: bytes | str, flags: int = os.O_WRONLY | os.O_TRUNC):
    """Like write() but return the errno of the failing call (None if none failed)
    and which call failed ('open', 'write' or 'close')."""
    if isinstance(data, str):
        data = data.encode()
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return e.errno, "open"
    failed = None
    try:
        write_all(fd, data)
    except OSError as e:
        failed = (e.errno, "write")
    try:
        os.close(fd)
    except OSError as e:
        if failed is None:
            failed = (e.errno, "close")
    return failed if failed else (None, None)


def errname(code) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "success"


def command(path: Path, cmd: str) -> None:
    """Write one command line to a control/state/autostart file."""
    write(path, cmd + "\n")


def valid_commands(pool_or_vol: Path) -> list[str]:
    return [line for line in read(pool_or_vol / "control").splitlines() if line.strip()]


def error_line(obj: Path) -> str:
    return read(obj / "error")


# the mounts of the running test (set by the fixtures), whose logs must record
# every refusal
ACTIVE_MOUNTS: list[Mount] = []


def assert_one_error_line(obj: Path) -> str:
    """The object's error file holds one line, and the log says it too (the
    reason, i.e. the text after the line's first ': ', appears in the log)."""
    text = error_line(obj)
    assert text.strip(), f"{obj}/error is empty after a refused operation"
    assert text.endswith("\n") and text.count("\n") == 1, (
        f"{obj}/error should hold exactly one line, got {text!r}"
    )
    size = os.stat(obj / "error").st_size
    assert size == len(text.encode()), f"{obj}/error: st_size {size}, content {len(text)} bytes"
    line = text.strip()
    reason = line.split(": ", 1)[-1]
    if ACTIVE_MOUNTS:
        logs = "".join(m.log() for m in ACTIVE_MOUNTS)
        assert reason in logs, f"the refusal {line!r} is not in the storagefs log"
    return line


def escape_path(path: Path | str) -> str:
    """`systemd-escape --path PATH` (the same rules in Python where the tool is missing)."""
    if shutil.which("systemd-escape"):
        return run(["systemd-escape", "--path", str(path)]).stdout.strip()
    parts = [p for p in str(path).split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, ch in enumerate("/".join(parts).encode()):
        c = chr(ch)
        if c == "/":
            out.append("-")
        elif (c.isascii() and (c.isalnum() or c in ":_.")) and not (i == 0 and c == "."):
            out.append(c)
        else:
            out.append(f"\\x{ch:02x}")
    return "".join(out)


def qemu_info(path: Path | str) -> dict:
    return json.loads(run(["qemu-img", "info", "--output=json", str(path)]).stdout)


def ls_names(path: Path) -> set[str]:
    return set(os.listdir(path))


# --------------------------------------------------------------------------
# XML


STORAGEFS_POOL_NS = "https://storagefs.org/xmlns/pool/1.0"


def pool_xml(name: str, target: Path | str, extra: str = "", uuid: str | None = None) -> str:
    uuid_el = f"  <uuid>{uuid}</uuid>\n" if uuid else ""
    return (
        f"<pool type='dir'>\n  <name>{name}</name>\n{uuid_el}{extra}"
        f"  <target>\n    <path>{target}</path>\n  </target>\n</pool>\n"
    )


def volume_defaults_el(fmt: str, capacity: str) -> str:
    return (
        f"  <storagefs:volume-defaults xmlns:storagefs='{STORAGEFS_POOL_NS}'"
        f" format='{fmt}' capacity='{capacity}'/>\n"
    )


def volume_xml(
    name: str,
    capacity: int,
    fmt: str = "raw",
    allocation: int | None = None,
    permissions: tuple[str, int, int] | None = None,
) -> str:
    alloc = ""
    if allocation is not None:
        alloc = f"  <allocation unit='bytes'>{allocation}</allocation>\n"
    perms = ""
    if permissions:
        mode, owner, group = permissions
        perms = (
            f"    <permissions>\n      <mode>{mode}</mode>\n      <owner>{owner}</owner>\n"
            f"      <group>{group}</group>\n    </permissions>\n"
        )
    return (
        f"<volume type='file'>\n  <name>{name}</name>\n"
        f"  <capacity unit='bytes'>{capacity}</capacity>\n{alloc}"
        f"  <target>\n    <format type='{fmt}'/>\n{perms}  </target>\n</volume>\n"
    )


def parse(data: bytes | str) -> etree._Element:
    if isinstance(data, str):
        data = data.encode()
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(data, parser)


def structure(el: etree._Element) -> tuple:
    """Element names and attribute names, recursively, in document order."""
    return (
        el.tag,
        tuple(sorted(el.attrib.keys())),
        tuple(structure(c) for c in el if isinstance(c.tag, str)),
    )


def assert_same_structure(actual: bytes | str, reference: Path) -> None:
    got = structure(parse(actual))
    want = structure(etree.parse(str(reference)).getroot())
    assert got == want, (
        f"structure differs from {reference.name}:\n got: {got}\nwant: {want}\n"
        f"document:\n{actual if isinstance(actual, str) else actual.decode()}"
    )


_SCHEMAS: dict[str, etree.RelaxNG] = {}


def assert_valid(data: bytes | str, schema: str) -> None:
    """Validate against libvirt's RELAX NG schema (storagepool / storagevol)."""
    if schema not in _SCHEMAS:
        path = conformance("libvirt", "src", "conf", "schemas", f"{schema}.rng")
        _SCHEMAS[schema] = etree.RelaxNG(file=str(path))
    rng = _SCHEMAS[schema]
    doc = parse(data)
    assert rng.validate(doc), f"{schema}.rng rejects the document: {rng.error_log}\n{data}"


def xml_value(data: bytes | str, xpath: str) -> str:
    res = parse(data).xpath(xpath)
    assert res, f"{xpath} not found"
    return res[0] if isinstance(res[0], str) else res[0].text


def define_pool(
    m: Mount, name: str, target: Path, extra: str = "", build: bool = True, start: bool = True
) -> Path:
    """mkdir + config.xml (+ build + start) a dir pool; returns the pool dir."""
    pdir = m.pool(name)
    os.mkdir(pdir)
    write(pdir / "config.xml", pool_xml(name, target, extra))
    if build:
        command(pdir / "control", "build")
    if start:
        command(pdir / "control", "start")
    return pdir
