"""Issue 7, "Bad input — figures from fuzzing": hypothesis-generated input written
through a real mount to every entry point that takes bytes from a user (pool,
volume and secret config.xml; pool and volume control; state; autostart), plus
hostile mkdir names and symlinks planted in a pool's directory.

For each refused input: an errno from the clear set (never EIO), exactly one
line in the object's `error` file (and a fresh one: a sentinel refusal with a
unique word is written every SENTINEL_EVERY inputs and must not survive the
next refusal), nothing changed (the bytes of every file in the state directory
and the entries of the pools' target directories after each refusal; the
tree's config.xml/state/autostart/... files and listings in windows of
TREE_EVERY refusals), and the mount still serving. Each test prints its counts.

Inputs: each hypothesis example draws SEEDS structured inputs (a grammar of
hostile XML or command lines: malformed, over 1 MiB, deep, entity expansion,
XXE, DTDs, wrong namespaces, unknown types, absurd sizes and units, hostile
names) and a Random that makes MUTANTS cheap mutants of each (vocabulary swaps
that keep the document well-formed, tag renames, cuts, splices): hypothesis
needs about 2 ms to draw one structured document, more than the write costs.
The seed is fixed (STORAGEFS_FUZZ_SEED) so a failure reproduces, and
STORAGEFS_FUZZ_INPUTS changes the number of inputs per entry point (default
10,000; the seven campaigns take about 2.5-3 minutes on a 2-core machine).

Host safety: accepted inputs are undone at once (the volume is made again, the
pool redefined ...), and inputs that the server would accept with a large
preallocation, or that would wipe a volume grown huge by an earlier line of the
same write, are left out before writing (storagefs's own parsers decide);
they are counted as `skipped`.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from mount_helpers import MiB, command, define_pool, qemu_info, read, volume_xml, write

from storagefs.parsing import split_line
from storagefs.units import parse_size
from storagefs.xml.pool import parse_pool
from storagefs.xml.volume import parse_volume

INPUTS = int(os.environ.get("STORAGEFS_FUZZ_INPUTS", "10000"))
SEED = int(os.environ.get("STORAGEFS_FUZZ_SEED", "20240607"))
#: per hypothesis example: drawn inputs, and mutants written for each
SEEDS = 2
MUTANTS = 24
BATCH = 50
TREE_EVERY = 16
SENTINEL_EVERY = 97
LOG_SAMPLE_EVERY = 53
#: a preallocation or wipe bigger than this is never sent (host disk safety)
HOST_LIMIT = 64 * MiB

#: the errnos a refused input may get (issue 7 and SPEC "Errors are errno")
CLEAR = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBUSY, errno.EEXIST,
         errno.ENOENT, errno.EPERM, errno.EFBIG,
         errno.ENOTEMPTY}  # delete of a dir pool whose directory still holds files
DEAD = {errno.ENOTCONN, errno.ECONNABORTED}
PASSWD_MARK = b"root:x:0:0"


def errname(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "ok"


# --------------------------------------------------------------------------
# raw syscalls (about 1 ms a write through the mount; pathlib costs as much again)


def write_raw(path: str, data: bytes) -> tuple[int | None, str | None]:
    """open/write/close; the errno and the call that failed. No O_TRUNC: an open for
    writing gets its own empty buffer anyway, and the SETATTR it costs would make
    the campaigns a tenth slower (test_writers covers O_TRUNC)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e.errno, "open"
    failed: tuple[int | None, str | None] = (None, None)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        failed = (e.errno, "write")
    try:
        os.close(fd)
    except OSError as e:
        if failed[0] is None:
            failed = (e.errno, "close")
    return failed


def read_raw(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        out = os.read(fd, 1 << 16)  # one READ for a small file (direct_io: no read-ahead)
        while len(out) % (1 << 16) == 0 and out:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(fd)


def listdir(path: str) -> tuple[str, ...] | str:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError as e:
        return f"<{errname(e.errno)}>"


def disk_files(root: str, out: dict, content: bool) -> None:
    """Bytes (content=True) or stat figures of every file under root."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        out[root] = "<missing>"
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if content:
                disk_files(e.path, out, content)
            else:
                out[e.path] = "<dir>"
            continue
        if content:
            if e.name == "lock":
                continue
            with open(e.path, "rb") as f:
                out[e.path] = f.read()
        else:
            s = e.stat(follow_symlinks=False)
            out[e.path] = (s.st_mode, s.st_size, s.st_blocks, s.st_mtime_ns, s.st_ino)


def etc_passwd_fingerprint() -> tuple:
    """What storagefs could damage in /etc/passwd through a followed link (wipe, resize,
    a copy over it): its type, mode, owner, root's line, no NUL byte. Not the whole
    content: other tests on this machine may add users meanwhile."""
    s = os.lstat("/etc/passwd")
    with open("/etc/passwd", "rb") as f:
        data = f.read()
    return (s.st_mode, s.st_uid, data.split(b"\n", 1)[0], b"\0" in data,
            all(line.count(b":") == 6 for line in data.splitlines() if line))


def changed_kind(inputs: list[bytes]) -> str:
    """Changes by a write of several command lines (one applied, a later one refused)
    are told apart from the rest."""
    multi = any(not d.lstrip().startswith(b"<") and
                len(d.split(b"\n")) > (2 if d.endswith(b"\n") else 1) for d in inputs)
    return "changed (a multi-line write: an earlier line applied)" if multi else "changed"


def shown(data: bytes, limit: int = 300) -> str:
    r = repr(data[:limit])
    return r + (f"... ({len(data)} bytes)" if len(data) > limit else "")


# --------------------------------------------------------------------------
# the campaign: write inputs, check each refusal


@dataclass
class Target:
    """One object an entry point is exercised on."""

    label: str
    file: str           # the file written
    obj: str            # the object directory whose `error` records the refusal
    name: bytes         # replaces @NAME@ in generated input
    target: bytes = b""  # replaces @TARGET@
    reset: object = None  # called after an accepted input
    sentinel: object = None  # word -> bytes: an input refused with `word` in the reason


@dataclass
class Campaign:
    title: str
    m: object
    targets: list[Target]
    tree_files: list[str]
    tree_dirs: list[str]
    state_dirs: list[str]
    target_dirs: list[str]
    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    skipped: int = 0
    changes: int = 0
    bad_errno: int = 0
    bad_error_file: int = 0
    stale_error: int = 0
    tree_checked: int = 0
    refused_at_close: int = 0
    crashes: int = 0
    errnos: collections.Counter = field(default_factory=collections.Counter)
    problems: dict = field(default_factory=dict)
    problem_counts: collections.Counter = field(default_factory=collections.Counter)
    log_samples: list[tuple[str, bytes]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timing: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        self.window: collections.deque = collections.deque(maxlen=TREE_EVERY)
        self.pending_sentinel: tuple[Target, str] | None = None
        self.rebaseline()

    # snapshots ------------------------------------------------------------
    def disk(self) -> dict:
        out: dict = {}
        for d in self.state_dirs:
            disk_files(d, out, content=True)
        for d in self.target_dirs:
            disk_files(d, out, content=False)
        return out

    def tree(self) -> dict:
        out: dict = {p: read_raw(p) for p in self.tree_files}
        out.update({d: listdir(d) for d in self.tree_dirs})
        return out

    def rebaseline(self) -> None:
        self.disk_before = self.disk()
        self.tree_before = self.tree()
        self.window.clear()

    def problem(self, kind: str, text: str) -> None:
        """Keep the first few of each kind (and count them all)."""
        self.problem_counts[kind] += 1
        first = self.problems.setdefault(kind, [])
        if len(first) < 4:
            first.append(text)

    # one input ------------------------------------------------------------------
    def feed(self, t: Target, data: bytes) -> None:
        data = data.replace(b"@NAME@", t.name).replace(b"@TARGET@", t.target)
        t0 = time.perf_counter()
        code, call = write_raw(t.file, data)
        t1 = time.perf_counter()
        self.timing["write"] += t1 - t0
        self.inputs += 1
        self.errnos[errname(code)] += 1
        if code in DEAD or not self.m.alive():
            self.crashes += 1
            raise AssertionError(f"{self.title}: storagefs died (errno {errname(code)} from "
                                 f"{call}) on input to {t.label}: {shown(data)}")
        if code is None:
            self.accepted += 1
            if t.reset is not None:
                t.reset()
            self.rebaseline()
            self.timing["accepted+reset"] += time.perf_counter() - t1
            return
        self.refused += 1
        if code not in CLEAR:
            self.bad_errno += 1
            self.problem("errno", f"{t.label}: {errname(code)} from {call} for {shown(data)}")
        err = read_raw(os.path.join(t.obj, "error"))
        t2 = time.perf_counter()
        self.timing["error"] += t2 - t1
        if err is None or not err.endswith(b"\n") or err.count(b"\n") != 1:
            self.bad_error_file += 1
            what = "no error file" if err is None else f"error file holds {err!r}"
            self.problem("error-file", f"{t.label}: {what} after {errname(code)} for "
                                       f"{shown(data)}")
        elif self.pending_sentinel is not None:
            st_target, word = self.pending_sentinel
            if st_target is t and word.encode() in err:
                self.stale_error += 1
                self.problem("stale-error", f"{t.label}: the refusal ({errname(code)}) of "
                                            f"{shown(data)} left the previous error line {err!r}")
        if err and self.refused % LOG_SAMPLE_EVERY == 0:
            self.log_samples.append((t.label, err))
        self.pending_sentinel = None
        if call == "close" and not t.file.endswith("config.xml") and b"\n" in data.rstrip(b"\n"):
            # the complete lines were commands of their own, accepted by the write() that
            # carried them (SPEC: a command is complete at its newline); only the last,
            # unterminated line was refused, by close(): what the lines did is not a change
            # made by a refusal
            self.refused_at_close += 1
            self.rebaseline()
            return
        self.window.append((t.label, data, code))
        t3 = time.perf_counter()
        disk = self.disk()
        self.timing["disk"] += time.perf_counter() - t3
        if disk != self.disk_before:
            self.changes += 1
            diff = sorted(k for k in set(disk) | set(self.disk_before)
                          if disk.get(k) != self.disk_before.get(k))
            self.problem(changed_kind([data]),
                         f"{t.label}: refused ({errname(code)} from {call}) input {shown(data)} "
                         f"changed the state directory / pool storage: {diff[:6]}")
            self.disk_before = disk
            self.tree_before = self.tree()  # the same change is not counted again
            self.window.clear()
            return
        if len(self.window) >= TREE_EVERY:
            t4 = time.perf_counter()
            self.check_tree()
            self.timing["tree"] += time.perf_counter() - t4

    def check_tree(self) -> None:
        tree = self.tree()
        leaked = [p for p, v in tree.items() if isinstance(v, bytes) and PASSWD_MARK in v]
        if leaked:
            self.problem("xxe", f"/etc/passwd content appears in {leaked}")
        self.tree_checked += len(self.window)
        if tree != self.tree_before:
            self.changes += 1
            diff = {k: (self.tree_before.get(k), tree.get(k)) for k in tree
                    if tree.get(k) != self.tree_before.get(k)}
            inputs = [(label, shown(d, 120), errname(c)) for label, d, c in self.window]
            self.problem(changed_kind([d for _, d, _ in self.window]),
                         f"the tree changed over {len(self.window)} refused inputs "
                         f"{inputs}: {str(diff)[:600]}")
            self.tree_before = tree
        self.window.clear()

    def sentinel(self, n: int) -> None:
        """A refusal with a unique word in its reason, so the next refusal's error line
        can be told from a stale one."""
        t = self.targets[n % len(self.targets)]
        if t.sentinel is None:
            return
        word = f"sentinel{n}x"
        code, _ = write_raw(t.file, t.sentinel(word))
        err = read_raw(os.path.join(t.obj, "error")) or b""
        if code is None or word.encode() not in err:
            self.problem("sentinel", f"{t.label}: the sentinel input was not refused with its "
                                     f"word in error ({errname(code)}, {err!r})")
            if code is None and t.reset is not None:
                t.reset()
            self.rebaseline()
            return
        self.pending_sentinel = (t, word)

    def batch(self, items) -> None:
        for idx, data in items:
            t = self.targets[idx % len(self.targets)]
            if data is None:
                self.skipped += 1
                continue
            self.feed(t, data)
            if self.inputs % SENTINEL_EVERY == 0:
                self.sentinel(self.inputs // SENTINEL_EVERY)
        if not self.m.alive():
            raise AssertionError(f"{self.title}: storagefs is not running")
        os.listdir(self.m.mnt / "pools")

    def run(self, strategy, mutator, safe=None, want: int = INPUTS) -> None:
        """Feed inputs until `want` are written. Each hypothesis example draws SEEDS
        (target, input) pairs and a Random; every input is written as drawn and as
        MUTANTS mutants made by `mutator` (hypothesis spends about 2 ms drawing one
        structured document, the mutator some microseconds). `safe(data)` False
        leaves an input out (host safety)."""
        rounds = 0
        while self.inputs < want:
            per = SEEDS * (1 + MUTANTS)
            todo = max(1, (want - self.inputs + per - 1) // per)

            @seed(SEED + rounds)
            @settings(max_examples=todo, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(st.lists(st.tuples(st.integers(0, 1 << 16), strategy),
                            min_size=SEEDS, max_size=SEEDS),
                   st.randoms(use_true_random=False))
            def go(items, rnd):
                t0 = time.perf_counter()
                batch = []
                for idx, data in items:
                    batch.append((idx, data))
                    batch += [(idx, mutator(rnd, data)) for _ in range(MUTANTS)]
                if safe is not None:
                    batch = [(i, d if safe(d) else None) for i, d in batch]
                self.timing["mutate"] += time.perf_counter() - t0
                self.batch(batch)
                self.last_example_end = time.perf_counter()

            go()
            rounds += 1
            assert rounds < 20, "hypothesis stopped generating"

    def finish(self) -> None:
        """Last window, the log samples, the mount still serving; print the figures."""
        if self.window:
            self.check_tree()
        log = self.m.log()
        missing = [(label, err) for label, err in self.log_samples
                   if err.decode(errors="replace").strip().split(": ", 1)[-1] not in log]
        for label, err in missing[:5]:
            self.problem("log", f"{label}: refusal {err!r} is not in the storagefs log")
        internal = log.count("internal error")
        self.crashes += internal
        alive = self.m.alive()
        ls = subprocess.run(["ls", "-lR", str(self.m.mnt / "pools")], capture_output=True,
                            timeout=60)
        secs = time.monotonic() - self.started
        top = ", ".join(f"{k}={v}" for k, v in self.errnos.most_common())
        print(f"\nFUZZ {self.title}: inputs={self.inputs} refused={self.refused} "
              f"accepted={self.accepted} skipped={self.skipped} crashes={self.crashes} "
              f"changes_on_refusal={self.changes} bad_errno={self.bad_errno} "
              f"bad_error_file={self.bad_error_file} stale_error={self.stale_error} "
              f"tree_checked={self.tree_checked} "
              f"refused_at_close_after_accepted_lines={self.refused_at_close} "
              f"log_checked={len(self.log_samples)} log_missing={len(missing)} "
              f"({secs:.1f} s, {self.inputs / secs:.0f} inputs/s)\n  errnos: {top}\n  time: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in self.timing.most_common()))
        report = []
        for kind, first in self.problems.items():
            report.append(f"  {kind}: {self.problem_counts[kind]} times, e.g.")
            report += [f"    {text}" for text in first]
        print("\n".join(report))
        assert alive and ls.returncode == 0, f"mount not serving: {ls.stderr!r}"
        assert self.inputs >= INPUTS
        assert not self.problems and self.crashes == 0, (
            f"{self.title}: problems {dict(self.problem_counts)}, crashes {self.crashes}:\n"
            + "\n".join(report))


# --------------------------------------------------------------------------
# hostile pieces


def b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


HOSTILE_NAMES = [
    b"", b"/", b"a/b", b"../x", b"..", b".", b".hidden", b"..hidden", b"\x00", b"a\x00b",
    b"v" * 255, b"v" * 256, b"v" * 4096, "\u00e9".encode() * 128, b"\n", b"a\nb", b"\t", b" ",
    b" a", b"-", b"--help", b"~", b"$(reboot)", b"`id`", b"'", b'"', b"<", b">", b"&amp;",
    b"&#10;", b"&#x0;", b"&#47;", b"&#x2F;..", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80",
    b"by-uuid", b"by-path", b"default", b"%s%n", "\u202e".encode(), b"a;rm -rf /", b"\x7f",
    b"a b", "\u65e5\u672c".encode(), b"\x1b[31m", b"*", b"?", b"\\", b"//", b"/etc/passwd",
]
HOSTILE_PATHS = [
    b"", b"/", b"relative", b"./x", b"/etc", b"/etc/passwd", b"/dev/sda", b"/dev/null",
    b"/proc/self", b"/tmp/../etc", b"/tmp/x/../../etc", b"//", b"/" + b"a" * 5000,
    b"/x\ny", b"/x\x00y", b"/\xff", b"@TARGET@", b"@TARGET@/", b"@TARGET@/../..",
    b"@TARGET@/sub", b"/run/storagefs-fuzz-missing", b"~root", b"$HOME", b"file:///etc/passwd",
]
SIZE_TEXT = [
    b"0", b"1", b"-1", b"-0", b"1.5", b"1,5", b"1e9", b"0x10", b" 5 ", b"", b" ", b"abc",
    b"18446744073709551616", b"9223372036854775807", b"9223372036854775808", b"4096",
    b"1048576", b"99999999999999999999999999999999999999999999999999", b"1 G", b"+5", b"5G",
    b"nan", b"inf", b"\xd9\xa1", b"007", b"1" * 41, b"&#49;",
]
UNITS = [
    b"", b"b", b"bytes", b"byte", b"K", b"k", b"KiB", b"KB", b"M", b"MiB", b"MB", b"G", b"GiB",
    b"GB", b"T", b"TiB", b"TB", b"P", b"PiB", b"E", b"EiB", b"EB", b"Z", b"ZiB", b"Y", b"parsecs",
    b"kb", b"g", b" G", b"G ", b"%", "\u00b5".encode(), b"iB", b"KiBi", b"-", b"M\x00",
]
ENTITY_REFS = [b"&xxe;", b"&a9;", b"&lol;", b"&#10;", b"&#x0;", b"&#65;", b"&amp;", b"&lt;",
               b"&unknown;", b"&", b"&#;", b"&#xFFFFFFFF;", b"&#1;", b"&" + b"a" * 70 + b";"]

LAUGHS = b'<!ENTITY a0 "lol">' + b"".join(
    b'<!ENTITY a%d "%s">' % (i, b"&a%d;" % (i - 1) * 10) for i in range(1, 10))
QUADRATIC = b'<!ENTITY a "' + b"x" * 50000 + b'">'


def doctype(root: bytes) -> list[bytes]:
    return [
        b"<!DOCTYPE " + root + b" [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>",
        b"<!DOCTYPE " + root + b" SYSTEM 'file:///etc/passwd'>",
        b"<!DOCTYPE " + root + b" PUBLIC '-//x//y' 'http://127.0.0.1:9/evil.dtd'>",
        b"<!DOCTYPE " + root + b" [" + LAUGHS + b"]>",
        b"<!DOCTYPE " + root + b" [" + QUADRATIC + b"]>",
        b"<!DOCTYPE " + root + b" [<!ENTITY % p SYSTEM 'file:///etc/passwd'> %p;]>",
        b"<!DOCTYPE " + root + b" [<!ELEMENT " + root + b" ANY>]>",
        b"<!DOCTYPE " + root + b">",
        b"<!doctype " + root + b">",
        b"<!ENTITY x 'y'>",
    ]


def prologs(root: bytes) -> st.SearchStrategy[bytes]:
    plain = [b"<?xml version='1.0'?>\n", b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
             b"\xef\xbb\xbf", b"<!-- hi -->\n", b"\n\n  ", b"<?xml-stylesheet href='x'?>"]
    odd = [b"<?xml version='1.0' encoding='UTF-16'?>", b"<?xml version='1.0' encoding='UTF-7'?>",
           b"<?xml version='1.0' encoding='EBCDIC-US'?>", b"<?xml version='1.1'?>",
           b"<?xml version='2.0'?>", b"<?xml?>", b"<?xml version='1.0'", b"garbage ",
           b"\xff\xfe", b"\xfe\xff\x00<", b"<?XML version='1.0'?>", b" <?xml version='1.0'?>",
           b"+ADw-!DOCTYPE x+AD4-"]
    return st.one_of(st.just(b""), st.just(b""), st.just(b""), st.sampled_from(plain),
                     st.sampled_from(odd), st.sampled_from(doctype(root)))


def names() -> st.SearchStrategy[bytes]:
    return st.one_of(st.just(b"@NAME@"), st.just(b"@NAME@"), st.just(b"@NAME@"),
                     st.sampled_from(HOSTILE_NAMES),
                     st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
                     st.binary(max_size=12), st.sampled_from(ENTITY_REFS),
                     st.just(b"@NAME@").map(lambda n: n + b"\n"))


def sizes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(SIZE_TEXT),
                     st.integers(-(1 << 70), 1 << 70).map(lambda i: str(i).encode()),
                     st.integers(0, 1 << 26).map(lambda i: str(i).encode()))


def unit_attr() -> st.SearchStrategy[bytes]:
    return st.one_of(st.just(b""), st.sampled_from(UNITS).map(lambda u: b" unit='" + u + b"'"),
                     st.just(b" unit="), st.just(b' unit="G\''))


def text_el(tag: bytes, value: st.SearchStrategy[bytes]):
    return value.map(lambda v: b"<" + tag + b">" + v + b"</" + tag + b">")


def junk_elements() -> st.SearchStrategy[bytes]:
    deep = st.integers(2, 300).map(lambda d: b"<a>" * d + b"x" + b"</a>" * d)
    return st.one_of(
        st.sampled_from([b"<unknown/>", b"<name/>", b"<name></name>", b"<x:y xmlns:x='urn:x'/>",
                         b"<![CDATA[<name>x</name>]]>", b"<!-- c -->", b"<?pi x?>",
                         b"<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' "
                         b"href='file:///etc/passwd' parse='text'/>",
                         b"<name>a</name><name>b</name>", b"</pool>", b"<pool>", b"text",
                         b"<a b='1' b='2'/>", b"<a xmlns:p='' p:b='1'/>", b"<a\x00/>"]),
        st.sampled_from(ENTITY_REFS), deep,
        st.text(alphabet="<>/='\"&;abcxyz! ", max_size=20).map(b))


@st.composite
def mutate(draw, base: st.SearchStrategy[bytes]) -> bytes:
    data = draw(base)
    how = draw(st.integers(0, 9))
    if how >= 6 or not data:
        return data
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 40)))
    if how == 0:
        return data[:i]
    if how == 1:
        return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    if how == 2:
        return data[:i] + data[j:]
    if how == 3:
        return data[:j] + data[i:j] + data[j:]
    if how == 4:
        return data[:i] + draw(st.sampled_from([b"<", b">", b"&", b"'", b"\x00", b"\xff",
                                                b"]]>", b"</", b"<!"])) + data[i:]
    return data.replace(b">", b"> ", 1)


def huge(root: bytes) -> st.SearchStrategy[bytes]:
    """Over the 1 MiB limit in bytes, in elements or in one text node (rare: they are slow)."""
    return st.sampled_from([
        b"<" + root + b"><name>@NAME@</name><!-- " + b"x" * (MiB + 10) + b" --></" + root + b">",
        b"<" + root + b"><name>@NAME@</name>" + b"<a/>" * 10_001 + b"</" + root + b">",
        b"<" + root + b"><name>" + b"n" * (MiB + 1) + b"</name></" + root + b">",
        b"<" + root + b" a='" + b"v" * (2 * MiB) + b"'/>",
        b"<" + root + b">" + b"<a>" * 100_000,
        b" " * (MiB + 1),
    ])


def document(root: bytes, body: st.SearchStrategy[bytes], attrs: st.SearchStrategy[bytes]):
    roots = st.sampled_from([root] * 12 + [
        b"Pool", b"volume", b"secret", b"pool", b"p:" + root, b"domain", b"network", b""])
    ns = st.sampled_from([b""] * 10 + [
        b" xmlns='http://evil.example/ns'", b" xmlns:p='http://libvirt.org/schemas/" + root + b"'",
        b" xmlns='http://libvirt.org/schemas/storagepool/fs/1.0'",
        b" xmlns:storagefs='https://storagefs.org/xmlns/pool/2.0'", b" xmlns:=''"])
    tails = st.sampled_from([b"\n"] * 8 + [b"", b"\n\n", b"<x/>", b"<!-- t -->", b"junk",
                                           b"\x00", b"</" + root + b">", b"\xff"])
    structured = st.builds(
        lambda pro, r, n, a, bd, t: pro + b"<" + r + n + a + b">" + bd + b"</" + r + b">" + t,
        prologs(root), roots, ns, attrs, body, tails)
    return weighted((60, structured), (25, mutate(structured)), (1, huge(root)),
                    (8, st.binary(max_size=64)), (1, st.just(b"")))


def weighted(*pairs):
    """one_of with weights (hypothesis's one_of picks its branches uniformly)."""
    total = sum(w for w, _ in pairs)

    @st.composite
    def pick(draw):
        r = draw(st.integers(0, total - 1))
        for w, s in pairs:
            if r < w:
                return draw(s)
            r -= w
        raise AssertionError

    return pick()


def join_parts(parts) -> bytes:
    return b"\n  ".join(p for p in parts if p)


def optional(s):
    return st.one_of(st.just(b""), s)


# ---- pool XML

POOL_TYPES = [b"dir", b"fs", b"netfs", b"logical", b"disk", b"iscsi", b"iscsi-direct", b"scsi",
              b"mpath", b"rbd", b"sheepdog", b"gluster", b"zfs", b"vstorage"]
BAD_TYPES = [b"", b"DIR", b"dir ", b" dir", b"nonsense", b"../dir", b"ceph", b"lvm", b"file",
             b"x" * 300, b"dir\ndir", b"&#100;ir"]


def pool_body() -> st.SearchStrategy[bytes]:
    uuid = st.one_of(st.uuids().map(lambda u: str(u).encode()),
                     st.sampled_from([b"", b"not-a-uuid", b"00000000-0000-0000-0000-000000000000",
                                      b"{12345678-1234-1234-1234-123456789abc}",
                                      b"12345678123412341234123456789abc", b"g" * 36]))
    perms = st.builds(lambda mo, ow, gr: b"<permissions><mode>" + mo + b"</mode><owner>" + ow
                      + b"</owner><group>" + gr + b"</group></permissions>",
                      st.sampled_from([b"0711", b"0755", b"777", b"0", b"99999", b"-1", b"abc",
                                       b"0o755", b""]),
                      sizes(), sizes())
    target = st.builds(lambda p, pm: b"<target><path>" + p + b"</path>" + pm + b"</target>",
                       st.one_of(st.just(b"@TARGET@"), st.just(b"@TARGET@"),
                                 st.sampled_from(HOSTILE_PATHS)), optional(perms))
    source = st.builds(
        lambda parts: b"<source>" + b"".join(parts) + b"</source>",
        st.lists(st.one_of(
            st.builds(lambda p: b"<device path='" + p + b"'/>",
                      st.sampled_from([b"/dev/fuzz-missing", b"/dev/null", b"", b"x", b"/etc"])),
            st.builds(lambda p: b"<dir path='" + p + b"'/>", st.sampled_from(HOSTILE_PATHS[:8])),
            st.builds(lambda h, p: b"<host name='" + h + b"' port='" + p + b"'/>",
                      st.sampled_from([b"", b"localhost", b"256.1.1.1", b"-x"]), sizes()),
            text_el(b"name", names()),
            st.builds(lambda f: b"<format type='" + f + b"'/>",
                      st.sampled_from([b"auto", b"ext4", b"gpt", b"lvm2", b"bogus", b""])),
            st.sampled_from([b"<adapter type='scsi_host' name='host0'/>", b"<adapter type='x'/>",
                             b"<auth type='chap' username='u'><secret usage='x'/></auth>",
                             b"<initiator><iqn name='iqn.x'/></initiator>",
                             b"<vendor name='v'/>", b"<product name='p'/>"])), max_size=4))
    size_el = st.builds(lambda tag, u, v: b"<" + tag + u + b">" + v + b"</" + tag + b">",
                        st.sampled_from([b"capacity", b"allocation", b"available"]),
                        unit_attr(), sizes())
    defaults = st.builds(
        lambda ns, f, c: b"<storagefs:volume-defaults xmlns:storagefs='" + ns + b"' format='"
        + f + b"' capacity='" + c + b"'/>",
        st.sampled_from([b"https://storagefs.org/xmlns/pool/1.0"] * 3
                        + [b"https://storagefs.org/xmlns/pool/2.0", b"urn:evil", b""]),
        st.sampled_from([b"raw", b"qcow2", b"vmdk", b"iso", b"bogus", b"", b"qcow2 "]), sizes())
    misc = st.sampled_from([b"<features><cow state='yes'/></features>",
                            b"<features><cow state='maybe'/></features>",
                            b"<refresh><volume allocation='capacity'/></refresh>",
                            b"<refresh><volume allocation='bogus'/></refresh>",
                            b"<fs:mount_opts xmlns:fs='http://libvirt.org/schemas/storagepool/"
                            b"fs/1.0'><fs:option name='ro'/></fs:mount_opts>"])
    parts = st.tuples(
        st.one_of(text_el(b"name", names()), text_el(b"name", names()), st.just(b"")),
        optional(text_el(b"uuid", uuid)), optional(size_el), optional(source),
        st.one_of(target, target, target, st.just(b""), st.just(b"<target/>")),
        optional(defaults), optional(misc), optional(junk_elements()))
    return parts.map(join_parts)


def pool_attrs() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b" type='dir'"), st.just(b" type='dir'"), st.just(b" type='dir'"),
        st.sampled_from(POOL_TYPES).map(lambda t: b" type='" + t + b"'"),
        st.sampled_from(BAD_TYPES).map(lambda t: b" type='" + t + b"'"),
        st.just(b""), st.just(b" type=dir"), st.just(b" type='dir' type='fs'"))


POOL_DOCS = document(b"pool", pool_body(), pool_attrs())


# ---- volume XML

VOL_FORMATS = [b"raw", b"qcow2", b"qcow", b"vmdk", b"vdi", b"vpc", b"qed", b"iso", b"dir",
               b"bochs", b"none", b"bogus", b"", b"QCOW2", b"luks", b"fat"]


def volume_body() -> st.SearchStrategy[bytes]:
    size_el = st.builds(lambda tag, u, v: b"<" + tag + u + b">" + v + b"</" + tag + b">",
                        st.sampled_from([b"capacity", b"capacity", b"allocation", b"physical"]),
                        unit_attr(), sizes())
    perms = st.builds(lambda mo, ow, gr: b"<permissions><mode>" + mo + b"</mode><owner>" + ow
                      + b"</owner><group>" + gr + b"</group></permissions>",
                      st.sampled_from([b"0600", b"0644", b"777", b"-1", b"abc", b"07777", b""]),
                      sizes(), sizes())
    encryption = st.builds(
        lambda f, s: b"<encryption format='" + f + b"'>" + s + b"</encryption>",
        st.sampled_from([b"luks", b"qcow", b"default", b"bogus", b""]),
        st.sampled_from([b"", b"<secret type='passphrase' uuid='" + str(uuidlib.uuid4()).encode()
                         + b"'/>", b"<secret type='passphrase' usage='/x'/>",
                         b"<secret type='passphrase' uuid='bad'/>", b"<secret/>"]))
    target_parts = st.tuples(
        optional(text_el(b"path", st.sampled_from(HOSTILE_PATHS))),
        st.one_of(st.just(b""), st.sampled_from(VOL_FORMATS).map(
            lambda f: b"<format type='" + f + b"'/>")),
        optional(perms), optional(encryption),
        optional(text_el(b"compat", st.sampled_from([b"1.1", b"0.10", b"9.9", b"x", b"1.", b""]))),
        st.sampled_from([b"", b"", b"<nocow/>", b"<features><lazy_refcounts/></features>",
                         b"<features><bogus/></features>",
                         b"<clusterSize unit='KiB'>64</clusterSize>",
                         b"<clusterSize>-1</clusterSize>",
                         b"<clusterSize unit='E'>9</clusterSize>"]))
    target = target_parts.map(lambda p: b"<target>" + b"".join(p) + b"</target>")
    backing = st.builds(
        lambda p, f: b"<backingStore><path>" + p + b"</path><format type='" + f
        + b"'/></backingStore>",
        st.sampled_from(HOSTILE_PATHS + [b"@TARGET@/@NAME@", b"@TARGET@/other"]),
        st.sampled_from(VOL_FORMATS))
    parts = st.tuples(
        st.one_of(text_el(b"name", names()), text_el(b"name", names()), st.just(b"")),
        optional(text_el(b"key", st.sampled_from(HOSTILE_PATHS))),
        st.one_of(size_el, size_el, st.just(b"<capacity unit='bytes'>1048576</capacity>")),
        optional(size_el), optional(target), optional(backing),
        optional(st.sampled_from([b"<source><extent start='0' end='1'/></source>", b"<source/>"])),
        optional(junk_elements()))
    return parts.map(join_parts)


VOLUME_DOCS = document(
    b"volume", volume_body(),
    st.one_of(st.just(b""), st.just(b" type='file'"), st.sampled_from(
        [b" type='block'", b" type='dir'", b" type='network'", b" type='netdir'",
         b" type='ploop'", b" type='bogus'", b" type=''"])))


# ---- secret XML

def secret_body() -> st.SearchStrategy[bytes]:
    usage = st.builds(
        lambda t, child: b"<usage type='" + t + b"'>" + child + b"</usage>",
        st.sampled_from([b"volume", b"ceph", b"iscsi", b"tls", b"vtpm", b"none", b"bogus", b"",
                         b"VOLUME", b"ceph "]),
        st.one_of(st.just(b""), text_el(b"name", names()),
                  text_el(b"volume", st.sampled_from(HOSTILE_PATHS)),
                  text_el(b"target", names())))
    uuid = st.one_of(st.just(b"@NAME@"), st.uuids().map(lambda u: str(u).encode()),
                     st.sampled_from([b"", b"bad", b"@NAME@x", b"{@NAME@}", b"g" * 36]))
    parts = st.tuples(
        optional(text_el(b"uuid", uuid)),
        optional(text_el(b"description", weighted((30, names()), (1, st.just(b"d" * 70000))))),
        st.one_of(usage, usage, st.just(b"")), optional(junk_elements()))
    return parts.map(join_parts)


def secret_attrs() -> st.SearchStrategy[bytes]:
    yn = st.sampled_from([b"yes", b"no", b"", b"maybe", b"YES", b"1"])
    return st.builds(
        lambda e, p: e + p,
        st.one_of(st.just(b""), yn.map(lambda v: b" ephemeral='" + v + b"'")),
        st.one_of(st.just(b""), yn.map(lambda v: b" private='" + v + b"'")))


SECRET_DOCS = document(b"secret", secret_body(), secret_attrs())


# ---- command lines

SIZES_CMD = st.one_of(
    st.builds(lambda v, u: v + u, st.sampled_from(SIZE_TEXT[:20]), st.sampled_from(UNITS)),
    st.builds(lambda v, u: str(v).encode() + u, st.integers(-(1 << 66), 1 << 66),
              st.sampled_from(UNITS)),
    st.builds(lambda v, u: str(v).encode() + u, st.integers(0, 1 << 20),
              st.sampled_from([b"", b"K", b"KiB", b"M", b"b"])))
WORDS = st.one_of(
    st.sampled_from([b"overwrite", b"--overwrite", b"--delta", b"--shrink", b"--allocate",
                     b"--format", b"--pool", b"--bogus", b"-f", b"qcow2", b"raw", b"vmdk", b"iso",
                     b"default", b"fzp", b"nopool", b"zero", b"random", b"nnsa", b"trim",
                     b"gutmann", b"s1", b"123", b"'", b'"', b"\\", b"#", b";", b"&&", b"|",
                     b"$(id)", b"`id`", b"\t", b"--", b"-"]),
    st.sampled_from(HOSTILE_NAMES), SIZES_CMD,
    st.text(max_size=10).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=6))
POOL_VERBS = [b"start", b"stop", b"build", b"refresh", b"delete", b"undefine", b"destroy",
              b"START", b"Stop", b"build-overwrite", b"resize", b"clone", b"running", b""]
VOL_VERBS = [b"resize", b"resize", b"resize", b"clone", b"clone", b"wipe", b"wipe", b"snapshot",
             b"revert", b"delete-snapshot", b"delete", b"rm", b"RESIZE", b"Resize", b"start", b""]


def command_lines(verbs: list[bytes], extra: st.SearchStrategy[bytes] = WORDS):
    line = st.builds(
        lambda lead, v, args, sep, comment: lead + sep.join([v, *args]) + comment,
        st.sampled_from([b""] * 6 + [b" ", b"\t", b"  "]),
        st.one_of(st.sampled_from(verbs), st.sampled_from(verbs), st.sampled_from(verbs), extra),
        st.lists(extra, max_size=4),
        st.sampled_from([b" ", b" ", b" ", b"\t", b"  ", b"", b"\x00", b"\r"]),
        st.sampled_from([b""] * 8 + [b" # comment", b"#", b" \\", b"\r"]))
    ending = st.sampled_from([b"\n"] * 8 + [b"", b"\r\n", b"\n\n", b"\n\x00", b" \n"])
    lines = st.one_of(line, line, line, line,
                      st.lists(line, min_size=2, max_size=3).map(b"\n".join))
    return st.one_of(
        st.builds(lambda x, e: x + e, lines, ending), st.builds(lambda x, e: x + e, lines, ending),
        st.builds(lambda x, e: x + e, lines, ending), st.builds(lambda x, e: x + e, lines, ending),
        st.binary(max_size=40),
        st.sampled_from([b"x" * 4097 + b"\n", b"start " * 12000, b"\xff\xfe\n", b"\n", b"",
                         b"\n\n\n", b"#\n", b"start\x00\n", b"'unbalanced\n", b"a\"b\n"]))


def word_values(words: list[bytes]):
    value = st.one_of(st.sampled_from(words), st.sampled_from(words),
                      st.sampled_from(words).map(bytes.upper),
                      st.sampled_from(words).map(lambda w: w[:-1]),
                      st.sampled_from(words).map(lambda w: w + b"x"),
                      st.sampled_from(HOSTILE_NAMES), st.text(max_size=10).map(b),
                      st.binary(max_size=10))
    decorated = st.builds(lambda lead, v, trail: lead + v + trail,
                          st.sampled_from([b""] * 6 + [b" ", b"\t", b"\n", b"\x00"]), value,
                          st.sampled_from([b"\n"] * 6 + [b"", b"\r\n", b" \n", b"\n\n", b"\x00",
                                                         b"\nx\n", b" x\n"]))
    return st.one_of(decorated, decorated, decorated,
                     st.lists(decorated, min_size=2, max_size=3).map(b"".join),
                     st.sampled_from([b"y" * 70000, b"\n" * 5, b"", b"\xff\n"]))


# --------------------------------------------------------------------------
# mutators: cheap variations of a drawn input (vocabulary swaps keep it well-formed)


XML_VOCAB = [HOSTILE_NAMES, HOSTILE_PATHS, SIZE_TEXT, UNITS, ENTITY_REFS, POOL_TYPES, BAD_TYPES,
             [b"@NAME@", b"@TARGET@", b"@NAME@ ", b" @NAME@"]]
XML_INSERTS = [b"<!DOCTYPE x>", b"<!ENTITY a 'b'>", b"<![CDATA[x]]>", b"<!--", b"-->", b"<?pi?>",
               b"</name>", b"<name>", b"<a/>", b"&a9;", b"&xxe;", b"\x00", b"\xff\xfe", b"<",
               b"'", b"\"", b"]]>", b"<x:y/>", b"xmlns:x='urn:x'", b" a='1'", b"\n"]
_TEXT = re.compile(rb">([^<>]*)<")
_ATTR = re.compile(rb"=\s*(?:'([^']*)'|\"([^\"]*)\")")
_TAG = re.compile(rb"<(/?)([A-Za-z_][\w.:-]*)")


def mutate_xml(rnd, data: bytes) -> bytes:
    if len(data) > 1 << 16:  # huge: a cut of it (regex passes over megabytes cost too much)
        return data[:rnd.randint(0, len(data))]
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(10)
        if op <= 2:  # an element's text from a hostile vocabulary
            spots = list(_TEXT.finditer(data))
            if spots:
                m = rnd.choice(spots)
                data = data[:m.start(1)] + rnd.choice(rnd.choice(XML_VOCAB)) + data[m.end(1):]
                continue
        if op <= 4:  # an attribute's value
            spots = list(_ATTR.finditer(data))
            if spots:
                m = rnd.choice(spots)
                g = 1 if m.group(1) is not None else 2
                data = data[:m.start(g)] + rnd.choice(rnd.choice(XML_VOCAB)) + data[m.end(g):]
                continue
        if op == 5:  # a tag renamed (both ends, or only one)
            spots = list(_TAG.finditer(data))
            if spots:
                m = rnd.choice(spots)
                new = rnd.choice([b"p:" + m.group(2), m.group(2).upper(), b"name", b"pool",
                                  b"volume", b"x", m.group(2) + b"x"])
                if rnd.random() < 0.5:
                    data = data.replace(b"<" + m.group(2), b"<" + new)
                    data = data.replace(b"</" + m.group(2), b"</" + new)
                else:
                    data = data[:m.start(2)] + new + data[m.end(2):]
                continue
        i = rnd.randint(0, len(data))
        j = min(len(data), i + rnd.randint(0, 32))
        if op == 6:
            data = data[:i] + rnd.choice(XML_INSERTS) + data[i:]
        elif op == 7:
            data = data[:i] + data[j:]
        elif op == 8:
            data = data[:i]
        else:
            data = data[:j] + data[i:j] + data[j:]
    return data


CMD_VOCAB = [HOSTILE_NAMES, SIZE_TEXT, UNITS,
             [b"resize", b"clone", b"wipe", b"snapshot", b"revert", b"delete-snapshot", b"start",
              b"stop", b"build", b"refresh", b"delete", b"overwrite", b"--delta", b"--shrink",
              b"--allocate", b"--format", b"--pool", b"qcow2", b"raw", b"zero", b"random",
              b"s1", b"fzp", b"default", b"running", b"inactive", b"yes", b"no", b"'", b"\"",
              b"#", b"\\", b"\n", b"\r", b"\x00", b"\xff"]]


def mutate_line(rnd, data: bytes) -> bytes:
    for _ in range(rnd.randint(1, 2)):
        op = rnd.randrange(8)
        words = data.split(b" ")
        if op <= 2 and words:
            k = rnd.randrange(len(words))
            words[k] = rnd.choice(rnd.choice(CMD_VOCAB))
            data = b" ".join(words)
        elif op == 3:
            data = data.rstrip(b"\n") + b" " + rnd.choice(rnd.choice(CMD_VOCAB)) + b"\n"
        elif op == 4:
            data = rnd.choice(rnd.choice(CMD_VOCAB)) + b" " + data
        else:
            i = rnd.randint(0, len(data))
            j = min(len(data), i + rnd.randint(0, 8))
            if op == 5:
                data = data[:i] + data[j:]
            elif op == 6:
                data = data[:i] + bytes([rnd.randrange(256)]) + data[i:]
            else:
                data = data[:j] + data[i:j] + data[j:]
    return data


# --------------------------------------------------------------------------
# host-safety guards (storagefs's own parsers decide what it would accept)


def vol_doc_is_safe(data: bytes, pool_def) -> bool:
    """Not a document that makes storagefs preallocate more than HOST_LIMIT."""
    if b"allocation" not in data:
        return True
    try:
        vdef = parse_volume(data, pool_def)
    except Exception:  # noqa: BLE001 - refused by the server too
        return True
    cap = vdef.capacity if vdef.capacity is not None else MiB
    return not (vdef.allocation and cap > HOST_LIMIT)


def command_is_safe(data: bytes) -> bool:
    """No preallocation over HOST_LIMIT; nothing after a line that grows a volume past it
    (a later `wipe random` or scrub pass would write all of it)."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        try:
            cmd = split_line(line)
        except Exception:  # noqa: BLE001
            return True  # the handle stops at the first refused line
        if cmd is None or cmd[0] != "resize":
            continue
        verb, args = cmd
        big = False
        for arg in args:
            if arg.startswith("-"):
                continue
            try:
                big = big or parse_size(arg) > HOST_LIMIT
            except ValueError:
                pass
        if big and ("--allocate" in args or any(x.strip() for x in lines[i + 1:])):
            return False
    return True


# --------------------------------------------------------------------------
# fixtures of each campaign


def state_dirs(m) -> list[str]:
    return [str(m.state_dir / d) for d in ("pools", "volumes", "secrets")]


def common_tree(m, pools: list[str], names=("config.xml", "state", "autostart")) -> list[str]:
    return [str(m.pool(p) / f) for p in pools for f in names]


@pytest.fixture
def fz(mounted):
    """The fuzz mount: pools fzr (running), fzi (defined, inactive), fzn (pending)."""
    base = mounted.base
    define_pool(mounted, "fzr", base / "fzr")
    define_pool(mounted, "fzi", base / "fzi", start=False)
    os.mkdir(mounted.pool("fzn"))
    return mounted


def test_fuzz_pool_config_xml(fz):
    m = fz
    base = m.base
    docs = {n: read(m.pool(n) / "config.xml") for n in ("fzr", "fzi")}

    def restore(name):
        def reset():
            code, _ = write_raw(str(m.pool(name) / "config.xml"), docs[name].encode())
            assert code is None, f"restoring {name}'s definition failed: {errname(code)}"
        return reset

    def renew_pending():
        os.rmdir(m.pool("fzn"))
        os.mkdir(m.pool("fzn"))

    def sentinel(word):
        return f"<pool type='dir'><name>{word}</name><target><path>/x</path></target></pool>\n" \
            .encode()

    targets = [Target(f"pools/{n}/config.xml", str(m.pool(n) / "config.xml"), str(m.pool(n)),
                      n.encode(), str(base / n).encode(), restore(n), sentinel)
               for n in ("fzr", "fzi")]
    targets.append(Target("pools/fzn/config.xml (pending)", str(m.pool("fzn") / "config.xml"),
                          str(m.pool("fzn")), b"fzn", str(base / "fzn").encode(), renew_pending,
                          None))
    c = Campaign("pool config.xml", m, targets,
                 tree_files=common_tree(m, ["fzr", "fzi"], ("config.xml", "state", "uuid")) + [
                     str(m.pool("fzn") / "config.xml")],
                 tree_dirs=[str(m.pools), str(m.pools / "by-uuid")],
                 state_dirs=state_dirs(m), target_dirs=[str(base / "fzr"), str(base / "fzi")])
    before = etc_passwd_fingerprint()
    c.run(POOL_DOCS, mutate_xml)
    assert etc_passwd_fingerprint() == before
    c.finish()


@pytest.fixture
def fzvol(mounted):
    """Pool fzp (dir, volumes 1 MiB raw by default) with volumes v (raw, empty),
    d (raw, holding data) and q.qcow2 (with a snapshot s1)."""
    m = mounted
    extra = ("  <storagefs:volume-defaults xmlns:storagefs='https://storagefs.org/xmlns/pool/1.0'"
             " format='raw' capacity='1M'/>\n")
    define_pool(m, "fzp", m.base / "fzp", extra=extra)
    return m


def make_volume(m, name: str) -> None:
    """(Re)make a fuzz volume in its initial state."""
    v = m.vol(name, "fzp")
    if os.path.exists(v):
        os.rmdir(v)
    os.mkdir(v)
    if name == "d":
        with open(m.base / "fzp" / "d", "r+b") as f:
            f.write(b"data" * 1024)
    if name == "q.qcow2":
        os.mkdir(v / "snapshots" / "s1")


def drop_new_volumes(m, keep: set[str]) -> None:
    for pool in ("fzp", "default"):
        for name in os.listdir(m.pool(pool) / "volumes"):
            if name not in keep:
                os.rmdir(m.vol(name, pool))


class FuzzVolumes:
    """v (raw, empty), d (raw, holding data) and q.qcow2 (with snapshot s1) in pool fzp;
    after an accepted input, what changed is put back (cheaply: a volume is made
    again only when its definition, size, format or data changed)."""

    NAMES = ("v", "d", "q.qcow2")

    def __init__(self, m):
        self.m = m
        for name in self.NAMES:
            make_volume(m, name)
        self.initial = {name: self.look(name) for name in self.NAMES}

    def look(self, name: str) -> tuple:
        v = self.m.vol(name, "fzp")
        return (read_raw(str(v / "config.xml")), read_raw(str(v / "capacity")),
                read_raw(str(v / "format")))

    def holds_data(self) -> bool:
        with open(self.m.base / "fzp" / "d", "rb") as f:
            return f.read(4) == b"data"

    def reset(self, name: str) -> None:
        drop_new_volumes(self.m, set(self.NAMES))
        if self.look(name) != self.initial[name] or (name == "d" and not self.holds_data()):
            make_volume(self.m, name)
            self.initial[name] = self.look(name)
        elif name == "q.qcow2":
            snaps = self.m.vol(name, "fzp") / "snapshots"
            for snap in os.listdir(snaps):
                if snap != "s1":
                    os.rmdir(snaps / snap)
            if "s1" not in os.listdir(snaps):
                os.mkdir(snaps / "s1")

    def resetter(self, name: str):
        return lambda: self.reset(name)


def test_fuzz_volume_config_xml(fzvol):
    m = fzvol
    fv = FuzzVolumes(m)
    vols = fv.NAMES
    pool_def = parse_pool(read(m.pool("fzp") / "config.xml").encode())

    def sentinel(word):
        return volume_xml(word, MiB).encode()

    targets = [Target(f"fzp/volumes/{v}/config.xml", str(m.vol(v, "fzp") / "config.xml"),
                      str(m.vol(v, "fzp")), v.encode(), str(m.base / "fzp").encode(),
                      fv.resetter(v), sentinel) for v in vols]
    tree = []
    for v in vols:
        tree += [str(m.vol(v, "fzp") / f) for f in ("config.xml", "capacity")]
    c = Campaign("volume config.xml", m, targets, tree_files=tree,
                 tree_dirs=[str(m.pool("fzp") / "volumes"), str(m.vol("q.qcow2", "fzp")
                                                                 / "snapshots")],
                 state_dirs=state_dirs(m), target_dirs=[str(m.base / "fzp"), str(m.images)])
    def safe(d):
        return vol_doc_is_safe(d.replace(b"@NAME@", b"v").replace(b"@TARGET@", b"/x"), pool_def)

    before = etc_passwd_fingerprint()
    c.run(VOLUME_DOCS, mutate_xml, safe)
    assert etc_passwd_fingerprint() == before
    c.finish()


@pytest.fixture
def fzsec(mounted):
    m = mounted
    ids = {k: str(uuidlib.uuid4()) for k in ("pending", "defined", "other")}
    for u in ids.values():
        os.mkdir(m.mnt / "secrets" / u)
    write(m.mnt / "secrets" / ids["defined"] / "config.xml",
          "<secret ephemeral='no' private='no'><usage type='ceph'><name>c1</name></usage>"
          "</secret>\n")
    write(m.mnt / "secrets" / ids["other"] / "config.xml",
          "<secret><usage type='volume'><volume>/x</volume></usage></secret>\n")
    return m, ids


def test_fuzz_secret_config_xml(fzsec):
    m, ids = fzsec
    sec = m.mnt / "secrets"
    originals = {k: read_raw(str(sec / u / "config.xml")) for k, u in ids.items()}

    def reset_for(kind):
        def reset():
            u = ids[kind]
            if kind == "pending":
                os.rmdir(sec / u)
                os.mkdir(sec / u)
                return
            code, _ = write_raw(str(sec / u / "config.xml"), originals[kind])
            if code is not None:  # e.g. made private: make it again
                os.rmdir(sec / u)
                os.mkdir(sec / u)
                assert write_raw(str(sec / u / "config.xml"), originals[kind])[0] is None
        return reset

    def sentinel(word):
        return f"<secret><usage type='{word}'/></secret>\n".encode()

    targets = [Target(f"secrets/{k}/config.xml", str(sec / u / "config.xml"), str(sec / u),
                      u.encode(), b"", reset_for(k), sentinel if k == "defined" else None)
               for k, u in ids.items() if k != "other"]
    c = Campaign("secret config.xml", m, targets,
                 tree_files=[str(sec / u / "config.xml") for u in ids.values()],
                 tree_dirs=[str(sec)],
                 state_dirs=state_dirs(m), target_dirs=[])
    c.run(SECRET_DOCS, mutate_xml)
    c.finish()


@pytest.fixture
def fzctl(mounted):
    """fzc: running dir pool holding one volume; fzd: defined, its directory missing."""
    m = mounted
    define_pool(m, "fzc", m.base / "fzc")
    os.mkdir(m.vol("keep", "fzc"))
    define_pool(m, "fzd", m.base / "fzd-missing", build=False, start=False)
    return m


def pool_state_campaign(m, title: str, file: str, sentinel):
    targets = [Target(f"pools/{n}/{file}", str(m.pool(n) / file), str(m.pool(n)), n.encode(),
                      b"", None, sentinel) for n in ("fzc", "fzd")]
    return Campaign(title, m, targets,
                    tree_files=common_tree(m, ["fzc", "fzd"], ("state", "autostart")),
                    tree_dirs=[str(m.pools), str(m.pool("fzc") / "volumes")],
                    state_dirs=state_dirs(m),
                    target_dirs=[str(m.base / "fzc"), str(m.base / "fzd-missing")])


def test_fuzz_pool_control(fzctl):
    m = fzctl
    c = pool_state_campaign(m, "pool control", "control", lambda w: f"{w}\n".encode())
    c.run(command_lines(POOL_VERBS), mutate_line)
    assert os.path.exists(m.base / "fzc" / "keep"), "a pool command destroyed a volume"
    c.finish()


def test_fuzz_pool_state(fzctl):
    m = fzctl
    words = [b"running", b"inactive", b"building", b"degraded", b"inaccessible", b"start",
             b"stop", b"active", b"stopped", b"yes", b"1"]
    c = pool_state_campaign(m, "pool state", "state", lambda w: f"{w}\n".encode())
    c.run(word_values(words), mutate_line)
    c.finish()


def test_fuzz_pool_autostart(fzctl):
    m = fzctl
    words = [b"yes", b"no", b"y", b"n", b"true", b"false", b"on", b"off", b"1", b"0", b"ja",
             b"2", b"-1", b"yes no", b"running"]
    c = pool_state_campaign(m, "pool autostart", "autostart", lambda w: f"{w}\n".encode())
    c.run(word_values(words), mutate_line)
    c.finish()


def test_fuzz_volume_control(fzvol):
    m = fzvol
    fv = FuzzVolumes(m)
    vols = fv.NAMES
    targets = [Target(f"fzp/volumes/{v}/control", str(m.vol(v, "fzp") / "control"),
                      str(m.vol(v, "fzp")), v.encode(), b"", fv.resetter(v),
                      lambda w: f"{w}\n".encode()) for v in vols]
    tree = []
    for v in vols:
        tree += [str(m.vol(v, "fzp") / f) for f in ("config.xml", "capacity")]
    c = Campaign("volume control", m, targets, tree_files=tree,
                 tree_dirs=[str(m.pool("fzp") / "volumes"), str(m.pool() / "volumes"),
                            str(m.vol("q.qcow2", "fzp") / "snapshots")],
                 state_dirs=state_dirs(m), target_dirs=[str(m.base / "fzp"), str(m.images)])
    before = etc_passwd_fingerprint()
    c.run(command_lines(VOL_VERBS), mutate_line, command_is_safe)
    assert etc_passwd_fingerprint() == before
    c.finish()


# --------------------------------------------------------------------------
# hostile names through mkdir


NAME_STRATEGY = st.one_of(
    st.sampled_from(HOSTILE_NAMES), st.sampled_from(HOSTILE_NAMES),
    st.text(min_size=1, max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=20),
    st.integers(250, 300).map(lambda n: b"n" * n),
    st.sampled_from([b"ok-name", b"disk1.qcow2", b"x"]))
NAME_INPUTS = int(os.environ.get("STORAGEFS_FUZZ_NAMES", "1000"))


def legal_name(kind: str, name: bytes) -> bool:
    """SPEC "Names are safe" (plus: a secret's directory is its UUID, a snapshot name is
    not all digits)."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text or text.startswith(".") or "/" in text or len(name) > 255 or \
            any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return False
    if kind == "secrets":
        try:
            return str(uuidlib.UUID(text)) == text
        except ValueError:
            return False
    return not (kind == "snapshots" and text.isdigit())


def test_fuzz_hostile_mkdir_names(mounted):
    """mkdir in pools/, volumes/, snapshots/ and secrets/ with hostile names: a name
    SPEC refuses is refused (EINVAL, or ENAMETOOLONG from the kernel), nothing is made
    anywhere (the listing, the pool's directory and the state directory are compared),
    and a name that is accepted is listed under exactly that name."""
    m = mounted
    os.mkdir(m.vol("q.qcow2"))
    dirs = {"pools": m.pools, "volumes": m.pool() / "volumes",
            "snapshots": m.vol("q.qcow2") / "snapshots", "secrets": m.mnt / "secrets"}
    counts = collections.Counter()
    spent = collections.Counter()
    problems = collections.defaultdict(list)
    base_listing = {k: sorted(os.listdir(d)) for k, d in dirs.items()}

    def disk():
        out: dict = {}
        for d in state_dirs(m):
            disk_files(d, out, content=True)
        disk_files(str(m.images), out, content=False)
        out["base"] = sorted(os.listdir(m.base))
        return out

    def problem(kind, text):
        if len(problems[kind]) < 6:
            problems[kind].append(text)
        counts[f"PROBLEM {kind}"] += 1

    def one(kind: str, name: bytes) -> None:
        if b"\x00" in name or b"/" in name:
            counts["not sent ('/' or NUL: the kernel takes it as a path)"] += 1
            return
        path = os.fsencode(dirs[kind]) + b"/" + name
        snap = disk()
        counts["inputs"] += 1
        try:
            os.mkdir(path)
        except OSError as e:
            counts[f"refused {errname(e.errno)}"] += 1
            if e.errno not in CLEAR | {errno.ENAMETOOLONG}:
                problem("errno", f"{kind}/{name!r}: {errname(e.errno)}")
            after = disk()
            listing = sorted(os.listdir(dirs[kind]))
            if listing != base_listing[kind] or after != snap:
                diff = sorted(k for k in set(after) | set(snap) if after.get(k) != snap.get(k))
                snaps = ""
                if kind == "snapshots":
                    info = qemu_info(m.images / "q.qcow2")
                    snaps = f"; the image's snapshots: {[x['name'] for x in info['snapshots']]}"
                problem("changed on refusal", f"{kind}/{name!r} ({errname(e.errno)}): listing "
                                              f"{listing}, changed {diff[:4]}{snaps}")
                base_listing[kind] = listing
            return
        counts["accepted"] += 1
        listed = os.listdir(os.fsencode(dirs[kind]))
        if not legal_name(kind, name) or name not in listed:
            new = [n for n in listed if os.fsdecode(n) not in base_listing[kind]]
            problem("accepted", f"{kind}/{name!r} (legal: {legal_name(kind, name)}, "
                                f"listed as {new})")
        os.rmdir(path)

    def each(names, every_snapshot=1):
        for k, name in enumerate(names):
            for kind in dirs:
                if kind == "snapshots" and k % every_snapshot:
                    continue  # an accepted snapshot costs two qemu-img runs
                t0 = time.perf_counter()
                one(kind, name)
                spent[kind] += time.perf_counter() - t0

    @seed(SEED)
    @settings(max_examples=max(1, NAME_INPUTS // BATCH), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(NAME_STRATEGY, min_size=BATCH, max_size=BATCH))
    def go(batch):
        each(batch, every_snapshot=8)
        assert m.alive()

    each(HOSTILE_NAMES)
    go()
    print(f"\nFUZZ mkdir names: {dict(sorted(counts.items()))}\n  time: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()))
    for kind, first in problems.items():
        print(f"  {kind}, e.g.:\n" + "\n".join("    " + t for t in first))
    assert not problems


# --------------------------------------------------------------------------
# symlinks planted in a pool's directory


def file_state(path) -> tuple:
    st = os.lstat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_size, st.st_mtime_ns, st.st_mode


def holds_victim_data(path) -> bool:
    """True when the image at `path` (any format) reads 0x42 somewhere in its first MiB."""
    out = f"{path}.check-raw"
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), out],
                       capture_output=True, timeout=60, check=True)
        with open(out, "rb") as f:
            return b"\x42" * 64 in f.read(2 * MiB)
    finally:
        if os.path.exists(out):
            os.unlink(out)


def test_planted_symlinks_are_never_listed_nor_followed(mounted, tmp_path):
    """Links in a pool's directory to /etc/passwd, to another pool's volume and to /etc
    are never listed as volumes, and nothing done by their names reaches through them."""
    m = mounted
    target = tmp_path / "sl"
    p = define_pool(m, "sl", target)
    victim = m.images / "victim.img"
    victim.write_bytes(b"\x42" * MiB)
    command(m.pool() / "control", "refresh")
    before = file_state(victim)
    passwd_before = etc_passwd_fingerprint()
    links = {"passwd": "/etc/passwd", "victim.img": str(victim), "etc": "/etc",
             "rel": "../state/images/victim.img"}
    for name, dest in links.items():
        os.symlink(dest, target / name)
    command(p / "control", "refresh")
    time.sleep(0.2)
    listed = set(os.listdir(p / "volumes"))
    assert not listed & set(links), f"symlinks listed as volumes: {listed & set(links)}"
    outcomes = collections.Counter()

    def attempt(what, fn):
        try:
            fn()
            outcomes[f"{what}: ok"] += 1
        except OSError as e:
            outcomes[f"{what}: {errname(e.errno)}"] += 1
            assert e.errno != errno.EIO, f"{what}: EIO"

    os.mkdir(p / "volumes" / "src")
    for name in links:
        attempt("rmdir link", lambda n=name: os.rmdir(p / "volumes" / n))
        attempt("mkdir over link", lambda n=name: os.mkdir(p / "volumes" / n))
        attempt("control of link", lambda n=name: write(p / "volumes" / n / "control", "wipe\n"))
        for fmt in ("", " --format qcow2"):
            attempt("clone onto link", lambda n=name, f=fmt: write(
                p / "volumes" / "src" / "control", f"clone {n}{f}\n"))
    command(p / "control", "refresh")
    listed = set(os.listdir(p / "volumes"))
    print(f"\nSYMLINKS planted: links={len(links)} outcomes={dict(sorted(outcomes.items()))}")
    assert not listed & set(links), f"symlinks listed as volumes: {listed & set(links)}"
    assert all(os.path.islink(target / n) for n in links), "a planted link was removed"
    assert file_state(victim) == before, "the other pool's volume changed"
    assert etc_passwd_fingerprint() == passwd_before
    assert not holds_victim_data(target / "src")


SWAP_COMMANDS = {
    "raw": ["resize 4M", "resize --allocate 2M", "resize --shrink 4096", "wipe", "wipe random",
            "wipe nnsa", "clone c{i}", "clone c{i} --format qcow2", None],
    "qcow2": ["resize 4M", "resize --shrink 1M", "wipe", "snapshot s{i}", "clone c{i}",
              "clone c{i} --format raw", None],
}


def test_volume_swapped_for_a_symlink_is_not_followed(mounted, tmp_path):
    """The race: a listed volume is replaced by a link to another pool's volume just
    before an operation on it. storagefs's index learns of the change by inotify within
    a millisecond, so the probe worker is kept busy first (touching 25 qcow2 images
    queues 25 `qemu-img info` probes); then the operation reaches the backend while the
    index still holds the regular file. No operation may follow the link: the victim
    (raw and qcow2, holding 0x42 bytes) keeps its bytes and times, and no clone holds
    its data. `None` is rmdir."""
    m = mounted
    target = tmp_path / "sw"
    p = define_pool(m, "sw", target)
    victims = {"raw": m.images / "victim.img", "qcow2": m.images / "victim.qcow2"}
    followed: list[str] = []
    before: dict = {}

    def restore_victims():
        for v in victims.values():
            if v.exists():
                v.unlink()
        victims["raw"].write_bytes(b"\x42" * MiB)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(victims["qcow2"]), "8M"],
                       check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M",
                        str(victims["qcow2"])], check=True, capture_output=True)
        before.update({k: file_state(v) for k, v in victims.items()})

    restore_victims()
    command(m.pool() / "control", "refresh")
    busy = []
    for i in range(25):
        os.mkdir(p / "volumes" / f"busy{i}.qcow2")
        busy.append(target / f"busy{i}.qcow2")
    outcomes = collections.Counter()
    swaps = 0
    for fmt, commands in SWAP_COMMANDS.items():
        for _ in range(2):
            for cmd in commands:
                i = swaps
                name = f"sw{i}" + (".qcow2" if fmt == "qcow2" else "")
                os.mkdir(p / "volumes" / name)
                if fmt == "raw":
                    with open(target / name, "r+b") as f:
                        f.write(b"\x07" * 4096)
                for b_ in busy:
                    os.utime(b_)  # a probe each: the worker is busy for a while
                os.symlink(victims[fmt], target / f".link{i}")
                os.rename(target / f".link{i}", target / name)
                swaps += 1
                what = f"{fmt} {cmd.split()[0] if cmd else 'rmdir'}"
                try:
                    if cmd is None:
                        os.rmdir(p / "volumes" / name)
                    else:
                        write(p / "volumes" / name / "control", cmd.format(i=i) + "\n")
                    outcomes[f"{what}: ok"] += 1
                except OSError as e:
                    outcomes[f"{what}: {errname(e.errno)}"] += 1
                for f in os.listdir(target):
                    full = target / f
                    if f.startswith("c") and full.is_file() and not full.is_symlink():
                        if holds_victim_data(full):
                            followed.append(f"{cmd!r} on a {fmt} volume swapped for a link: the "
                                            f"clone {f} holds the other pool's data")
                        os.unlink(full)
                if os.path.lexists(target / name):
                    os.unlink(target / name)
                for k2, v in victims.items():
                    if file_state(v) != before[k2]:
                        head = v.read_bytes()[:16]
                        followed.append(f"{cmd!r} on a {fmt} volume swapped for a link changed "
                                        f"{v.name} (now begins {head!r})")
                        restore_victims()
    reached = sum(v for key, v in outcomes.items() if not key.endswith("ENOENT"))
    print(f"\nSYMLINKS swapped: swaps={swaps} reached storagefs's backend={reached} "
          f"followed={len(followed)} outcomes={dict(sorted(outcomes.items()))}")
    for f in followed:
        print("  FOLLOWED: " + f)
    assert not followed
    assert not [key for key in outcomes if key.endswith("EIO")], outcomes
