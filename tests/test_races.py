"""Issue 7, "Races": eight processes at once on one name or one pool, on a real mount.

- the same pool (mkdir + config.xml), the same volume (mkdir, or `clone NEW` from
  eight different volumes), the same snapshot (mkdir snapshots/S, or `snapshot S`
  written to control): exactly one wins, the others get EEXIST, and exactly one
  object exists afterwards;
- start / stop / rmdir / re-define of one pool from eight processes: only EBUSY,
  ENOENT or EEXIST, and the end state is consistent (`state` matches the state
  directory, and survives a remount);
- a 1 GiB clone (qemu-img convert to qcow2) does not block `ls -l`, `cat
  status.xml` or operations on other volumes: the worst latency of `ls` sampled
  every 50 ms is printed; only the ordering is asserted (many `ls` finished
  before the clone did).

The racers are separate processes released together (each waits for one byte
on its stdin), so the kernel and storagefs see truly concurrent requests.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest
from mount_helpers import (
    MiB,
    command,
    define_pool,
    ls_names,
    pool_xml,
    qemu_info,
    read,
    run,
)

RACERS = 8
ROUNDS = int(os.environ.get("STORAGEFS_RACE_ROUNDS", "5"))

RACER = r"""
import errno, json, os, random, sys, time
spec = json.loads(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.read(1)

def write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)

def attempt(fn):
    try:
        fn()
        return None
    except OSError as e:
        return e.errno

out = []
kind = spec["kind"]
if kind == "mkdir+config":
    e = attempt(lambda: os.mkdir(spec["dir"]))
    if e is None:
        e2 = attempt(lambda: write(spec["dir"] + "/config.xml", spec["doc"]))
        out.append(["mkdir", None])
        out.append(["config", e2])
    else:
        out.append(["mkdir", e])
elif kind == "mkdir":
    out.append(["mkdir", attempt(lambda: os.mkdir(spec["dir"]))])
elif kind == "write":
    out.append(["write", attempt(lambda: write(spec["path"], spec["data"]))])
elif kind == "churn":
    rnd = random.Random(spec["seed"])
    p = spec["pool"]
    for i in range(spec["n"]):
        what = rnd.choice(["start", "stop", "start", "stop", "running", "inactive",
                           "rmdir", "define"])
        if what in ("start", "stop"):
            e = attempt(lambda: write(p + "/control", what + "\n"))
        elif what in ("running", "inactive"):
            e = attempt(lambda: write(p + "/state", what + "\n"))
        elif what == "rmdir":
            e = attempt(lambda: os.rmdir(p))
        else:
            e = attempt(lambda: os.mkdir(p))
            if e is None or e == errno.EEXIST:
                e2 = attempt(lambda: write(p + "/config.xml", spec["doc"]))
                out.append(["config", e2])
        out.append([what, e])
print(json.dumps(out))
"""


def errname(code) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "ok"


def race(specs: list[dict], timeout: float = 120) -> list[list]:
    """Start one process per spec, release them together, return their results."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, json.dumps(s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for s in specs]
    for p in procs:
        assert p.stdout.readline() == b"ready\n", p.stderr.read()
    for p in procs:
        p.stdin.write(b"g")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


def outcome(results: list[list], step: str) -> collections.Counter:
    return collections.Counter(errname(e) for r in results for s, e in r if s == step)


def test_race_same_pool_one_wins(mounted, tmp_path):
    m = mounted
    totals = collections.Counter()
    for n in range(ROUNDS):
        name = f"rp{n}"
        docs = [pool_xml(name, tmp_path / f"{name}-t", extra=f"  <!-- racer {i} -->\n")
                for i in range(RACERS)]
        res = race([{"kind": "mkdir+config", "dir": str(m.pool(name)), "doc": d} for d in docs])
        mk = outcome(res, "mkdir")
        totals.update(mk)
        assert mk == {"ok": 1, "EEXIST": RACERS - 1}, f"round {n}: mkdir {dict(mk)}"
        winner = next(i for i, r in enumerate(res) if r[0] == ["mkdir", None])
        assert outcome(res, "config") == {"ok": 1}
        assert read(m.pool(name) / "config.xml") == docs[winner]
        stored = json.loads((m.state_dir / "pools" / f"{name}.json").read_text())
        assert stored["config"] == docs[winner]
        assert sorted(p for p in ls_names(m.pools) if p.startswith(name)) == [name]
    print(f"\nRACE same pool: rounds={ROUNDS} racers={RACERS} mkdir outcomes={dict(totals)}")


def test_race_pools_with_same_uuid_or_target_one_wins(mounted, tmp_path):
    """Eight different pool names defined at once with one uuid (or one target):
    the duplicate check and the definition must not interleave."""
    m = mounted
    totals = collections.Counter()
    for n in range(ROUNDS):
        same_uuid = n % 2 == 0
        uid = f"8a2f1f4e-0000-4000-8000-{n:012d}"
        names = [f"u{n}r{i}" for i in range(RACERS)]
        for name in names:
            os.mkdir(m.pool(name))
        specs = []
        for i, name in enumerate(names):
            target = tmp_path / (f"t{n}-{i}" if same_uuid else f"shared{n}")
            doc = pool_xml(name, target, uuid=uid if same_uuid else None)
            specs.append({"kind": "write", "path": str(m.pool(name) / "config.xml"),
                          "data": doc})
        res = race(specs)
        got = outcome(res, "write")
        totals.update(got)
        what = "uuid" if same_uuid else "target"
        assert got == {"ok": 1, "EEXIST": RACERS - 1}, f"round {n} (same {what}): {dict(got)}"
        stored = [json.loads(f.read_text()) for f in (m.state_dir / "pools").glob("*.json")]
        mine = [s for s in stored if s["name"] in names]
        assert len(mine) == 1, f"round {n} (same {what}): {len(mine)} stored definitions"
        for name in names:
            os.rmdir(m.pool(name))
    print(f"\nRACE same uuid/target: rounds={ROUNDS} outcomes={dict(totals)}")


def test_race_same_volume_one_wins(mounted):
    m = mounted
    totals = collections.Counter()
    for n in range(ROUNDS):
        name = f"rv{n}"
        res = race([{"kind": "mkdir", "dir": str(m.vol(name))}] * RACERS)
        got = outcome(res, "mkdir")
        totals.update(got)
        assert got == {"ok": 1, "EEXIST": RACERS - 1}, f"round {n}: {dict(got)}"
        assert (m.images / name).is_file()
        assert [v for v in ls_names(m.pool() / "volumes") if v.startswith(name)] == [name]
    print(f"\nRACE same volume (mkdir): rounds={ROUNDS} outcomes={dict(totals)}")


def test_race_clones_to_same_name_one_wins(mounted):
    """`clone NEW` written at once to eight volumes' control files (no directory lock
    of the kernel serialises these, unlike mkdir)."""
    m = mounted
    extra = ("  <storagefs:volume-defaults xmlns:storagefs='https://storagefs.org/xmlns/pool/1.0'"
             " format='raw' capacity='4M'/>\n")
    p = define_pool(m, "rc", m.base / "rc", extra=extra)
    for i in range(RACERS):
        os.mkdir(p / "volumes" / f"src{i}")
        with open(m.base / "rc" / f"src{i}", "r+b") as f:
            f.write(bytes([i + 1]) * 4096)
    totals = collections.Counter()
    for n in range(ROUNDS):
        new = f"copy{n}"
        res = race([{"kind": "write", "path": str(p / "volumes" / f"src{i}" / "control"),
                     "data": f"clone {new}\n"} for i in range(RACERS)])
        got = outcome(res, "write")
        totals.update(got)
        assert got == {"ok": 1, "EEXIST": RACERS - 1}, f"round {n}: {dict(got)}"
        winner = next(i for i, r in enumerate(res) if r[0][1] is None)
        with open(m.base / "rc" / new, "rb") as f:
            assert f.read(4096) == bytes([winner + 1]) * 4096, "the clone is not the winner's"
        assert sorted(v for v in ls_names(p / "volumes") if v.startswith("copy")) == \
            sorted(f"copy{k}" for k in range(n + 1))
        left = [f for f in os.listdir(m.base / "rc") if f.startswith(".")]
        assert not left, f"temporary files left: {left}"
    print(f"\nRACE clone to one name: rounds={ROUNDS} outcomes={dict(totals)}")


def snapshot_names(path) -> list[str]:
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json", path]).stdout)
    return [s["name"] for s in info.get("snapshots", [])]


@pytest.mark.parametrize("how", ["mkdir", "control"])
def test_race_same_snapshot_one_wins(mounted, how):
    m = mounted
    os.mkdir(m.vol("q.qcow2"))
    v = m.vol("q.qcow2")
    totals = collections.Counter()
    for n in range(ROUNDS):
        snap = f"s{n}x"
        if how == "mkdir":
            specs = [{"kind": "mkdir", "dir": str(v / "snapshots" / snap)}] * RACERS
            step = "mkdir"
        else:
            specs = [{"kind": "write", "path": str(v / "control"),
                      "data": f"snapshot {snap}\n"}] * RACERS
            step = "write"
        res = race(specs)
        got = outcome(res, step)
        totals.update(got)
        names = snapshot_names(m.images / "q.qcow2")
        assert names.count(snap) == 1, f"round {n}: snapshots in the image: {names}"
        if how == "control":
            # a writer that opens control while the winner's snapshot runs is refused at
            # once (EBUSY, issue 10 item 14); one that comes after finds the name taken
            assert got["ok"] == 1 and got["EEXIST"] + got["EBUSY"] == RACERS - 1 and \
                len(got) <= 3, f"round {n}: {dict(got)}"
        else:
            assert got == {"ok": 1, "EEXIST": RACERS - 1}, f"round {n}: {dict(got)}"
        assert ls_names(v / "snapshots") >= {snap}
    print(f"\nRACE same snapshot ({how}): rounds={ROUNDS} outcomes={dict(totals)}")


def test_race_start_stop_rmdir_ends_consistent(mounted, tmp_path):
    m = mounted
    name = "churn"
    doc = pool_xml(name, tmp_path / "churn-target")
    define_pool(m, name, tmp_path / "churn-target", start=False)
    totals = collections.Counter()
    allowed = {"ok", "EBUSY", "ENOENT", "EEXIST"}
    for n in range(ROUNDS):
        res = race([{"kind": "churn", "pool": str(m.pool(name)), "doc": doc, "seed": n * 100 + i,
                     "n": 25} for i in range(RACERS)])
        for r in res:
            for step, e in r:
                totals[f"{step}: {errname(e)}"] += 1
        bad = {k: v for k, v in totals.items() if k.split(": ")[1] not in allowed}
        assert not bad, f"round {n}: unexpected errnos {bad}"
        check_consistent(m, name)
    print(f"\nRACE start/stop/rmdir/define: rounds={ROUNDS} racers={RACERS} x 25 actions\n  "
          + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    before = pool_view(m, name)
    m.remount()
    after = pool_view(m, name)
    assert after == before, f"after a remount {after}, before {before}"


def pool_view(m, name) -> tuple:
    stored = m.state_dir / "pools" / f"{name}.json"
    if name not in ls_names(m.pools):
        return ("absent", stored.exists())
    if "state" not in ls_names(m.pool(name)):
        return ("pending", stored.exists())
    return ("defined", read(m.pool(name) / "state").strip())


def check_consistent(m, name) -> None:
    stored = m.state_dir / "pools" / f"{name}.json"
    view = pool_view(m, name)
    if view[0] != "defined":
        assert not stored.exists(), f"{view[0]} pool, but {stored} exists"
        return
    state = view[1]
    assert state in ("running", "inactive"), state
    raw = json.loads(stored.read_text())
    assert raw["active"] == (state == "running"), f"state {state}, stored {raw['active']}"
    valid = read(m.pool(name) / "control").split()
    assert ("stop" in valid) == (state == "running"), (state, valid)


# ---------------------------------------------------------------- a long clone


PROBE_INTERVAL = 0.05


def timed(argv) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, timeout=120)
    return time.monotonic() - t0, res


def sampler(argv_of, stop: threading.Event, out: list, every: float = PROBE_INTERVAL):
    """Run a command every `every` seconds until `stop`; record (end time, latency)."""
    i = 0
    while not stop.is_set():
        lat, res = timed(argv_of(i))
        assert res.returncode == 0, res.stderr
        out.append((time.monotonic(), lat))
        i += 1
        stop.wait(every)


def test_long_clone_does_not_block_ls_status_or_other_volumes(mounted):
    m = mounted
    os.mkdir(m.vol("big"))
    assert read(m.vol("big") / "capacity") == f"{1 << 30}\n"
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x1 0 1G", m.images / "big"], timeout=300)
    command(m.pool() / "control", "refresh")
    os.mkdir(m.vol("other"))
    clone = subprocess.Popen(
        [sys.executable, "-c", "import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY|os.O_TRUNC)\n"
         "os.write(fd, b'clone bigcopy --format qcow2\\n')\nos.close(fd)",
         str(m.vol("big") / "control")], stderr=subprocess.PIPE)
    t_start = time.monotonic()
    # every probe runs in a process of its own: a FUSE file held open in this process
    # would be flushed by each fork+exec of the others
    other = str(m.vol("other") / "control")
    vols = m.pool() / "volumes"
    probes = {
        "ls -l volumes/": lambda i: ["ls", "-l", str(vols)],
        "cat status.xml": lambda i: ["cat", str(m.pool() / "status.xml")],
        "other volume (resize, mkdir+rmdir)": lambda i: (
            ["sh", "-c", f"echo 'resize --delta 1M' > {other}"] if i % 2 == 0 else
            ["sh", "-c", f"mkdir {vols}/tmp{i} && rmdir {vols}/tmp{i}"]),
    }
    stop = threading.Event()
    samples = {k: [] for k in probes}
    threads = [threading.Thread(target=sampler, args=(fn, stop, samples[k]), daemon=True)
               for k, fn in probes.items()]
    for t in threads:
        t.start()
    progress = set()
    while clone.poll() is None:
        progress.add(read(m.vol("big") / "progress").strip())
        time.sleep(0.02)
    clone_end = time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    _, err = clone.communicate()
    assert clone.returncode == 0, err.decode()
    assert "bigcopy" in ls_names(vols)
    assert qemu_info(m.images / "bigcopy")["format"] == "qcow2"
    for off in (0, 512 * MiB, 1023 * MiB):
        res = run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P 0x1 {off} 1M",
                   m.images / "bigcopy"], check=False)
        assert "Pattern verification failed" not in res.stdout and res.returncode == 0, res.stdout
    report = [f"\nRACE long clone: 1 GiB raw -> qcow2 took {clone_end - t_start:.1f} s; "
              f"probes every {PROBE_INTERVAL * 1000:.0f} ms that finished before it:"]
    during = {}
    for k, xs in samples.items():
        lat = [x for end, x in xs if end < clone_end]
        during[k] = len(lat)
        report.append(f"  {k}: n={len(lat)}" + (
            f" worst={max(lat) * 1000:.0f} ms median={statistics.median(lat) * 1000:.0f} ms"
            if lat else ""))
    report.append(f"  progress values seen: {len(progress - {''})}")
    print("\n".join(report))
    for k, n in during.items():
        assert n >= 5, f"{k} finished only {n} times during the clone"
