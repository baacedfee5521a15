"""Issue 7, "Crashes — nothing lost": a stream of define / undefine / start / stop /
autostart / create / destroy / resize operations against a real mount, with
storagefs SIGKILLed at random points inside operations; each time the dead
mountpoint is recovered with `storagefs unmount` and a new storagefs is started
on the same state directory, and then:

- every pool definition in the state directory parses and is, byte for byte,
  either the definition before the interrupted operation or the one it wrote
  (never torn, never lost: an operation whose write() returned is kept);
- the tree shows exactly the stored definitions;
- no `.tmp` file is left in the state directory;
- in every pool directory, the files are exactly the volumes listed (no
  half-created file that is neither listed nor removed), and no dot-prefixed
  temporary file of storagefs is left behind;
- autostart pools are running again.

The counts are printed. STORAGEFS_CRASH_OPS / STORAGEFS_CRASH_KILLS /
STORAGEFS_CRASH_SEED change the stream.
"""

from __future__ import annotations

import collections
import errno
import glob
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from mount_helpers import MiB, parse, pool_xml, processes_naming, read, volume_xml

OPS = int(os.environ.get("STORAGEFS_CRASH_OPS", "1000"))
KILLS = int(os.environ.get("STORAGEFS_CRASH_KILLS", "20"))
SEED = int(os.environ.get("STORAGEFS_CRASH_SEED", "7"))
POOLS = ["c0", "c1", "c2", "c3"]
DEAD = {errno.ENOTCONN, errno.ECONNABORTED}
#: the kinds of operation a kill is aimed at, in turn; it lands at a random moment
#: within the time that kind of operation has been taking (median of the last ones)
KILL_AT = ["define", "create-xml", "create", "resize", "destroy", "undefine", "define",
           "create-xml", "autostart", "create", "define", "create-xml", "start", "stop"]
WEIGHTS = {"define": 24, "undefine": 7, "start": 5, "stop": 4, "autostart": 5, "create": 20,
           "create-xml": 8, "destroy": 13, "resize": 14}


class Interrupted(Exception):
    """A step failed because storagefs was killed (ENOTCONN / ECONNABORTED)."""


def errname(code) -> str:
    return errno.errorcode.get(code, str(code))


def write_line(path, data: str | bytes) -> None:
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class Stats:
    ops: int = 0
    ops_ok: int = 0
    kills: int = 0
    kills_in_op: int = 0
    restarts: int = 0
    torn: int = 0
    lost: int = 0
    tmp_left: int = 0
    orphans: int = 0
    phantoms: int = 0
    dot_left: int = 0
    autostart_not_running: int = 0
    tree_mismatch: int = 0
    tool_orphans_waited: int = 0
    wedged: int = 0
    seen_left: set = field(default_factory=set)
    op_errors: collections.Counter = field(default_factory=collections.Counter)
    kinds: collections.Counter = field(default_factory=collections.Counter)
    problems: list = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 30:
            self.problems.append(text)


class Stream:
    def __init__(self, m, rnd: random.Random):
        self.m = m
        self.rnd = rnd
        self.s = Stats()
        self.targets = {p: m.base / "targets" / p for p in POOLS}
        #: what each pool's stored definition may be (None: undefined); one value
        #: except while an interrupted operation is unresolved
        self.defs: dict[str, set] = {p: {None} for p in POOLS}
        self.autos: dict[str, set] = {p: {False} for p in POOLS}
        self.rev = 0
        self.vol_seq = 0
        self.durations: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=20))

    # ---- helpers --------------------------------------------------------
    def step(self, fn, *, done=None, maybe=None) -> None:
        """Run one syscall-level step; `done` updates the model after success,
        `maybe` (the step may or may not have happened) after a kill."""
        try:
            fn()
        except OSError as e:
            if e.errno in DEAD:
                if maybe:
                    maybe()
                raise Interrupted from None
            raise
        if done:
            done()

    def defined(self, p: str) -> bool:
        (only,) = self.defs[p]
        return only is not None

    def running_pools(self) -> list[str]:
        out = []
        for p in ["default", *POOLS]:
            if p != "default" and not self.defined(p):
                continue
            if read(self.m.pool(p) / "state").strip() == "running":
                out.append(p)
        return out

    def volumes(self, p: str) -> list[str]:
        return sorted(os.listdir(self.m.pool(p) / "volumes"))

    # ---- operations -------------------------------------------------------
    def op_define(self, p: str) -> None:
        self.rev += 1
        doc = pool_xml(p, self.targets[p], extra=f"  <!-- revision {self.rev} -->\n").encode()
        new = not self.defined(p)
        old = next(iter(self.defs[p]))
        pdir = self.m.pool(p)
        if new:
            self.step(lambda: os.mkdir(pdir))

        def maybe():
            self.defs[p] = {old, doc}

        def done():
            self.defs[p] = {doc}

        self.step(lambda: write_line(pdir / "config.xml", doc), done=done, maybe=maybe)
        if new:
            self.step(lambda: write_line(pdir / "control", "build\n"))
            if self.rnd.random() < 0.8:
                self.step(lambda: write_line(pdir / "state", "running\n"))

    def op_undefine(self, p: str) -> None:
        pdir = self.m.pool(p)
        old = next(iter(self.defs[p]))
        self.step(lambda: write_line(pdir / "state", "inactive\n"))

        def maybe():
            self.defs[p] = {old, None}

        def done():
            self.defs[p] = {None}
            self.autos[p] = {False}

        self.step(lambda: os.rmdir(pdir), done=done, maybe=maybe)

    def op_autostart(self, p: str) -> None:
        (old,) = self.autos[p]
        value = not old

        def maybe():
            self.autos[p] = {old, value}

        def done():
            self.autos[p] = {value}

        self.step(lambda: write_line(self.m.pool(p) / "autostart",
                                     "yes\n" if value else "no\n"), done=done, maybe=maybe)

    def op_state(self, p: str, word: str) -> None:
        self.step(lambda: write_line(self.m.pool(p) / "state", word + "\n"))

    def op_create(self, p: str, xml: bool) -> None:
        self.vol_seq += 1
        qcow = not xml and self.rnd.random() < 0.3
        name = f"v{self.vol_seq}" + (".qcow2" if qcow else "")
        vdir = self.m.vol(name, p)
        self.step(lambda: os.mkdir(vdir))
        if xml:
            doc = volume_xml(name, 2 * MiB, fmt="qcow2")
            self.step(lambda: write_line(vdir / "config.xml", doc))

    def op_destroy(self, p: str, vol: str) -> None:
        self.step(lambda: os.rmdir(self.m.vol(vol, p)))

    def op_resize(self, p: str, vol: str) -> None:
        self.step(lambda: write_line(self.m.vol(vol, p) / "control", "resize --delta 1M\n"))

    def pick(self, forced: str | None = None) -> tuple[str, callable]:
        """A random operation that makes sense now (or one of kind `forced`)."""
        rnd = self.rnd
        kinds = list(WEIGHTS)
        for _ in range(50):
            kind = forced or rnd.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            p = rnd.choice(POOLS)
            if kind == "define":
                return kind, lambda p=p: self.op_define(p)
            if kind in ("undefine", "start", "stop", "autostart"):
                defined = [q for q in POOLS if self.defined(q)]
                if len(defined) < 2 and kind == "undefine":
                    continue
                if not defined:
                    continue
                q = rnd.choice(defined)
                if kind == "undefine":
                    return kind, lambda q=q: self.op_undefine(q)
                if kind == "autostart":
                    return kind, lambda q=q: self.op_autostart(q)
                return kind, lambda q=q, k=kind: self.op_state(
                    q, "running" if k == "start" else "inactive")
            running = self.running_pools()
            if not running:
                continue
            q = rnd.choice(running)
            if kind in ("create", "create-xml"):
                if len(self.volumes(q)) > 12:
                    continue
                return kind, lambda q=q, x=kind == "create-xml": self.op_create(q, x)
            vols = self.volumes(q)
            if not vols:
                continue
            v = rnd.choice(vols)
            if kind == "destroy":
                return kind, lambda q=q, v=v: self.op_destroy(q, v)
            return kind, lambda q=q, v=v: self.op_resize(q, v)
        return "define", lambda: self.op_define(POOLS[0])

    # ---- the run ------------------------------------------------------------
    def run(self) -> Stats:
        rnd = self.rnd
        kill_at = sorted(rnd.sample(range(20, OPS), KILLS))
        kills = iter(KILL_AT * (KILLS // len(KILL_AT) + 1))
        for n in range(OPS):
            timer = None
            if kill_at and n == kill_at[0]:
                kill_at.pop(0)
                kind, op = self.pick(next(kills))
                took = sorted(self.durations[kind] or [0.005])
                timer = threading.Timer(rnd.uniform(0, took[len(took) // 2]), self.kill)
            else:
                kind, op = self.pick()
            self.s.ops += 1
            self.s.kinds[kind] += 1
            if timer is not None:
                timer.start()
            interrupted = False
            t0 = time.monotonic()
            try:
                op()
                self.s.ops_ok += 1
                if timer is None:
                    self.durations[kind].append(time.monotonic() - t0)
            except Interrupted:
                interrupted = True
            except OSError as e:
                self.s.op_errors[f"{kind}: {errname(e.errno)}"] += 1
                if e.errno == errno.EIO:
                    self.s.problem(f"op {n} {kind}: EIO")
            if timer is not None:
                timer.join()
                self.s.kills_in_op += interrupted
                self.restart()
            elif interrupted:
                self.s.problem(f"op {n} {kind}: storagefs died without being killed")
                self.restart()
        self.m.stop()
        self.m.start()
        self.s.restarts += 1
        self.check()
        return self.s

    def kill(self) -> None:
        """SIGKILL storagefs. If it does not die (a thread stuck in the kernel keeps
        /dev/fuse open, so the connection is never aborted and the client's syscall waits
        for ever), say so, with the stuck threads' kernel stacks, and abort the connection
        with `umount -f` so that the test fails instead of hanging."""
        self.s.kills += 1
        m = self.m
        m.killed = True
        m.proc.send_signal(signal.SIGKILL)
        try:
            m.proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
        stuck = []
        for task in glob.glob(f"/proc/{m.proc.pid}/task/*"):
            try:
                with open(f"{task}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"{task}/stack") as f:
                    top = [line.split()[-1] for line in f.read().splitlines()[:3]]
            except OSError:
                continue
            if state == "D":
                stuck.append(f"thread {os.path.basename(task)} in {' < '.join(top)}")
        self.s.wedged += 1
        self.s.problem(f"storagefs still alive 10 s after SIGKILL ({'; '.join(stuck)}): the "
                       "mount is wedged and the pending syscall never returns; aborted with "
                       "umount -f")
        subprocess.run(["umount", "-f", str(m.mnt)], capture_output=True)
        m.proc.wait(timeout=60)

    def wait_tool_orphans(self) -> None:
        """Host tools the killed storagefs had started (qemu-img) may still be writing in
        the pools' directories: wait until they are gone before looking."""
        mark = os.fsencode(str(self.m.base))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not processes_naming(mark):
                return
            self.s.tool_orphans_waited += 1
            time.sleep(0.05)
        raise AssertionError("host tools of the killed storagefs still run after 60 s")

    def restart(self) -> None:
        assert not self.m.alive()
        self.wait_tool_orphans()
        self.m.recover()  # `storagefs unmount` of the dead mountpoint
        self.m.start()
        self.s.restarts += 1
        self.check()

    # ---- after a restart --------------------------------------------------------
    def check(self) -> None:
        s, m = self.s, self.m
        stored = {}
        for f in sorted((m.state_dir / "pools").iterdir()):
            if f.name.startswith("."):
                continue
            try:
                raw = json.loads(f.read_bytes())
                config = raw["config"].encode("utf-8", "surrogateescape")
                parse(config)
            except Exception as e:  # noqa: BLE001 - any failure is a torn definition
                s.torn += 1
                s.problem(f"torn definition {f.name}: {e!r}")
                continue
            stored[raw["name"]] = (config, bool(raw.get("autostart")))
        for f in (m.state_dir / "volumes").rglob("*.json"):
            try:
                json.loads(f.read_bytes())
            except ValueError as e:
                s.torn += 1
                s.problem(f"torn volume definition {f}: {e!r}")
        tmp = {str(f) for f in m.state_dir.rglob("*")
               if ".tmp" in f.name and m.images not in f.parents} - s.seen_left
        s.seen_left |= tmp
        s.tmp_left += len(tmp)
        if tmp:
            s.problem(f"after restart {s.restarts}: temporary files left in the state "
                      f"directory: {sorted(tmp)}")
        for p in POOLS:
            got = stored.get(p, (None, False))
            if got[0] not in self.defs[p]:
                if got[0] is None:
                    s.lost += 1
                    s.problem(f"pool {p}: definition lost (expected one of "
                              f"{[d and d[-60:] for d in self.defs[p]]})")
                else:
                    s.torn += 1
                    s.problem(f"pool {p}: stored definition {got[0][-60:]!r} is neither the "
                              f"old nor the new one {[d and d[-60:] for d in self.defs[p]]}")
            self.defs[p] = {got[0]}
            if got[0] is not None:
                if got[1] not in self.autos[p]:
                    s.lost += 1
                    s.problem(f"pool {p}: autostart {got[1]}, expected one of {self.autos[p]}")
                self.autos[p] = {got[1]}
        # the tree shows what is stored
        listed = set(os.listdir(m.pools)) - {"by-uuid", "by-path"}
        if listed != set(stored):
            s.tree_mismatch += 1
            s.problem(f"pools listed {sorted(listed)} but stored {sorted(stored)}")
        for name, (config, autostart) in stored.items():
            if name not in listed:
                continue
            pdir = m.pool(name)
            if read(pdir / "config.xml").encode() != config:
                s.tree_mismatch += 1
                s.problem(f"pool {name}: config.xml differs from the stored definition")
            if autostart and read(pdir / "state").strip() != "running":
                s.autostart_not_running += 1
                s.problem(f"pool {name}: autostart, but {read(pdir / 'state').strip()} "
                          f"after the restart ({read(pdir / 'error').strip()})")
        # volumes: files in each pool directory == volumes listed
        dirs = {"default": m.images, **self.targets}
        for name, d in dirs.items():
            if not d.is_dir():
                continue
            files = {e.name for e in os.scandir(d) if e.is_file(follow_symlinks=False)}
            dots = {f for f in os.listdir(d) if f.startswith(".")}
            new = {str(d / f) for f in dots} - s.seen_left
            if new:
                s.seen_left |= new
                s.dot_left += len(new)
                s.problem(f"after restart {s.restarts}: temporary files left in a pool "
                          f"directory: {sorted(new)}")
            if name not in listed or read(m.pool(name) / "state").strip() != "running":
                continue
            vols = set(os.listdir(m.pool(name) / "volumes"))
            orphans = files - dots - vols
            phantoms = vols - files
            s.orphans += len(orphans)
            s.phantoms += len(phantoms)
            if orphans or phantoms:
                s.problem(f"pool {name}: files not listed {sorted(orphans)}, listed without a "
                          f"file {sorted(phantoms)}")


@pytest.mark.log_allows("left by an interrupted write", "removed unfinished temp files",
                        "an interrupted operation had moved it")
def test_sigkill_during_operations_loses_nothing(mount_factory):
    m = mount_factory()
    (m.base / "targets").mkdir()
    rnd = random.Random(SEED)
    started = time.monotonic()
    stream = Stream(m, rnd)
    for p in POOLS[:3]:
        stream.op_define(p)
    stream.op_autostart(POOLS[0])
    stream.op_autostart(POOLS[1])
    s = stream.run()
    secs = time.monotonic() - started
    print(f"\nCRASH: operations={s.ops} (completed {s.ops_ok}) kills={s.kills} "
          f"(inside an operation: {s.kills_in_op}) restarts={s.restarts} torn={s.torn} "
          f"lost={s.lost} tmp_left={s.tmp_left} orphans={s.orphans} phantoms={s.phantoms} "
          f"dot_files_left={s.dot_left} autostart_not_running={s.autostart_not_running} "
          f"tree_mismatch={s.tree_mismatch} wedged_after_kill={s.wedged} ({secs:.1f} s)\n"
          f"  operations: {dict(s.kinds)}\n  refused operations: {dict(s.op_errors)}")
    for p in s.problems:
        print("  " + p)
    assert s.kills == KILLS and s.restarts >= KILLS
    assert not s.problems, "\n".join(s.problems)
    assert (s.torn, s.lost, s.tmp_left, s.orphans, s.phantoms, s.dot_left,
            s.autostart_not_running, s.tree_mismatch, s.wedged) == (0, 0, 0, 0, 0, 0, 0, 0, 0)
