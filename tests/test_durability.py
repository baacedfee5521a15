"""Issue 10, items 5, 6 and 8: nothing lost, and a refused write changes nothing.

The state directory is a small tmpfs made for the test (filled up to make it
full) or a read-only bind mount of it; pools used here have their target
outside it (the default pool lives in STATE/images). Every refused operation
must fail with the errno of the state directory (ENOSPC, EROFS), leave one
line in the object's error file, leave the tree as it was, and leave it so
after a remount with the state directory writable again.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from mount_helpers import (
    GiB,
    assert_one_error_line,
    command,
    define_pool,
    ls_names,
    pool_xml,
    read,
    run,
    sh,
    volume_defaults_el,
    volume_xml,
    write,
    write_errno,
)

UUID = "6ab1c3d4-2f5e-4b7a-9c1d-0e2f3a4b5c6d"
UUID2 = "7bc2d4e5-3a6f-4c8b-8d2e-1f3a4b5c6d7e"
STATE_FS_SIZE = "1m"


def secret_xml(uuid: str, description: str = "disk key") -> str:
    return (f"<secret ephemeral='no' private='no'>\n  <description>{description}"
            f"</description>\n  <uuid>{uuid}</uuid>\n  <usage type='volume'>\n"
            f"    <volume>/x/{uuid}.qcow2</volume>\n  </usage>\n</secret>\n")


class StateFS:
    """The state directory on its own tmpfs: full on demand, or read-only (a read-only
    bind mount over it: storagefs keeps its lock file open for writing, so the tmpfs
    itself cannot be remounted read-only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"
        self.ro = False

    def fill(self, leave: int = 0) -> None:
        """Take every free byte (again: a deletion may have freed some), then give
        ``leave`` bytes back."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * 4096
        try:
            while True:
                os.write(fd, chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        if leave:
            os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))
        assert os.statvfs(self.path).f_bavail * 4096 <= leave + 4096

    def unfill(self) -> None:
        if self.filler.exists():
            self.filler.unlink()

    def readonly(self) -> None:
        if not self.ro:
            run(["mount", "--bind", self.path, self.path])
            run(["mount", "-o", "remount,bind,ro", self.path])
            self.ro = True

    def writable(self) -> None:
        if self.ro:
            run(["umount", self.path])
            self.ro = False

    def block(self, mode: str) -> None:
        self.fill() if mode == "full" else self.readonly()

    def unblock(self) -> None:
        self.writable()
        self.unfill()

    def leftovers(self) -> list[str]:
        """Temp files of storagefs in the state directory."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob(".*")
                      if p.name.endswith((".tmp", ".del")))


@pytest.fixture
def state_fs(tmp_path):
    """tmp_path/state on a 1 MiB tmpfs; set up before the mount (request it before
    mount_factory), so that it is removed after storagefs stopped."""
    path = tmp_path / "state"
    path.mkdir()
    run(["mount", "-t", "tmpfs", "-o", f"size={STATE_FS_SIZE},mode=0700", "tmpfs", path])
    fs = StateFS(path)
    try:
        yield fs
    finally:
        fs.ro = True
        fs.writable()
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def errno_of(mode: str) -> int:
    return errno.ENOSPC if mode == "full" else errno.EROFS


def snapshot(m) -> dict:
    """What the tree shows of pools, volumes and secrets (error files aside)."""
    out: dict = {}
    for name in sorted(ls_names(m.pools) - {"by-uuid", "by-path"}):
        p = m.pool(name)
        for f in ("config.xml", "state", "autostart"):
            if (p / f).exists():
                out[f"pools/{name}/{f}"] = read(p / f)
        out[f"pools/{name}/config.xml mode"] = oct(stat.S_IMODE(os.stat(p / "config.xml")
                                                            .st_mode))
        if (p / "volumes").exists():
            for v in sorted(ls_names(p / "volumes")):
                vd = p / "volumes" / v
                for f in ("config.xml", "capacity", "format"):
                    out[f"pools/{name}/volumes/{v}/{f}"] = read(vd / f)
                out[f"pools/{name}/volumes/{v}/config.xml mode"] = oct(
                    stat.S_IMODE(os.stat(vd / "config.xml").st_mode))
    for uid in sorted(ls_names(m.mnt / "secrets")):
        s = m.mnt / "secrets" / uid
        for f in ("config.xml", "value"):
            if (s / f).exists():
                out[f"secrets/{uid}/{f}"] = read(s / f)
    return out


def diff(before: dict, after: dict) -> list[str]:
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def setup_objects(m, tmp_path) -> None:
    """A running pool with a volume that has a stored document, an inactive pool, and
    a secret with a value; all targets outside the state directory."""
    define_pool(m, "ext", tmp_path / "ext")
    define_pool(m, "off", tmp_path / "off", start=False)
    os.mkdir(m.vol("v1", "ext"))
    write(m.vol("v1", "ext") / "config.xml", volume_xml("v1", 2 * GiB))
    s = m.mnt / "secrets" / UUID
    os.mkdir(s)
    write(s / "config.xml", secret_xml(UUID))
    write(s / "value", "passphrase-1")


def refusals(m, tmp_path) -> list[tuple[str, Path, object]]:
    """(what, object directory, action) for every write that needs the state directory."""
    sec = m.mnt / "secrets" / UUID
    ext, off, v1 = m.pool("ext"), m.pool("off"), m.vol("v1", "ext")
    new_ext = pool_xml("ext", tmp_path / "ext", volume_defaults_el("qcow2", "64M"))

    def w(path: Path, data: str):
        return lambda: write_errno(path, data)

    def chmod(path: Path):
        def act():
            try:
                os.chmod(path, 0o600)
            except OSError as exc:
                return exc.errno, "chmod"
            return None, None
        return act

    return [
        ("pools/ext/config.xml", ext, w(ext / "config.xml", new_ext)),
        ("chmod pools/ext/config.xml", ext, chmod(ext / "config.xml")),
        ("pools/ext/state inactive", ext, w(ext / "state", "inactive\n")),
        ("pools/ext/control stop", ext, w(ext / "control", "stop\n")),
        ("pools/default/state inactive", m.pool("default"),
         w(m.pool("default") / "state", "inactive\n")),
        ("pools/off/state running", off, w(off / "state", "running\n")),
        ("pools/off/control start", off, w(off / "control", "start\n")),
        ("pools/off/autostart yes", off, w(off / "autostart", "yes\n")),
        ("volume config.xml (grow)", v1, w(v1 / "config.xml", volume_xml("v1", 3 * GiB))),
        ("chmod volume config.xml", v1, chmod(v1 / "config.xml")),
        ("secrets/U/config.xml", sec, w(sec / "config.xml", secret_xml(UUID, "other"))),
        ("secrets/U/value", sec, w(sec / "value", "passphrase-2")),
        ("chmod secrets/U/config.xml", sec, chmod(sec / "config.xml")),
    ]


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_refused_save_changes_nothing(state_fs, mount_factory, tmp_path, mode):
    """Item 6: every writable file, with the state directory full or read-only."""
    m = mount_factory()
    setup_objects(m, tmp_path)
    before = snapshot(m)
    want = errno_of(mode)
    problems = []
    for what, obj, act in refusals(m, tmp_path):
        state_fs.block(mode)
        code, call = act()
        if code != want:
            problems.append(f"{what}: {errno.errorcode.get(code, code)} from {call}, "
                            f"expected {errno.errorcode[want]}")
            continue
        try:
            line = assert_one_error_line(obj)
            assert os.strerror(want) in line or "full" in line or "read-only" in line, line
        except AssertionError as exc:
            problems.append(f"{what}: {exc}")
        changed = diff(before, snapshot(m))
        if changed:
            problems.append(f"{what}: refused, yet the tree changed: {changed}")
        if state_fs.leftovers():
            problems.append(f"{what}: temp files left: {state_fs.leftovers()}")
    assert not problems, "\n".join(problems)
    state_fs.unblock()
    m.remount()
    assert not diff(before, snapshot(m)), diff(before, snapshot(m))


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_new_objects_and_deletions_with_unwritable_state_dir(state_fs, mount_factory,
                                                             tmp_path, mode):
    """Item 6: mkdir/rmdir of pools, volumes and secrets. What needs no record (a
    pending pool or secret) is made; what needs one fails (a volume made from the
    pool's defaults has its format on record); deletions fail on a read-only state
    directory (nothing destroyed) and work on a full one (removing a record takes no
    space)."""
    m = mount_factory()
    setup_objects(m, tmp_path)
    want = errno_of(mode)
    before = snapshot(m)

    state_fs.block(mode)
    os.mkdir(m.pool("newpool"))
    assert write_errno(m.pool("newpool") / "config.xml",
                       pool_xml("newpool", tmp_path / "np")) == (want, "write")
    assert_one_error_line(m.pool("newpool"))
    assert read(m.pool("newpool") / "config.xml") == ""
    os.mkdir(m.mnt / "secrets" / UUID2)
    assert write_errno(m.mnt / "secrets" / UUID2 / "config.xml",
                       secret_xml(UUID2)) == (want, "write")
    assert_one_error_line(m.mnt / "secrets" / UUID2)
    # a volume made by mkdir has its format on record (issue 10 item 1): refused, and
    # nothing is left on the storage
    with pytest.raises(OSError) as exc:
        os.mkdir(m.vol("v2", "ext"))
    assert exc.value.errno == want
    assert "v2" not in os.listdir(m.pool("ext") / "volumes")
    assert not (tmp_path / "ext" / "v2").exists()

    # a resize forgets the document but keeps the format on record: a rewrite, refused
    # on a full state directory as on a read-only one, and nothing changes
    cap = read(m.vol("v1", "ext") / "capacity")
    state_fs.block(mode)
    assert write_errno(m.vol("v1", "ext") / "control", "resize 4G\n") == (want, "write")
    assert_one_error_line(m.vol("v1", "ext"))
    assert read(m.vol("v1", "ext") / "capacity") == cap
    state_fs.unblock()

    deletions = [
        ("rmdir volume v1", m.vol("v1", "ext"), lambda: rmdir_errno(m.vol("v1", "ext"))),
        ("rmdir pool off", m.pool("off"), lambda: rmdir_errno(m.pool("off"))),
        ("rmdir secret", m.mnt / "secrets" / UUID,
         lambda: rmdir_errno(m.mnt / "secrets" / UUID)),
    ]
    for what, obj, act in deletions:
        state_fs.block(mode)
        code, _ = act()
        if mode == "readonly":
            assert code == want, f"{what}: {code}"
            assert_one_error_line(obj)
            assert os.path.isdir(obj), what
        else:
            assert code is None, f"{what}: {errno.errorcode.get(code, code)}"
    assert not state_fs.leftovers(), state_fs.leftovers()
    shown = snapshot(m)

    state_fs.unblock()
    m.remount()
    after = snapshot(m)
    kept = {k: v for k, v in shown.items() if "newpool" not in k and UUID2 not in k}
    assert not diff(kept, after), diff(kept, after)
    assert "newpool" not in ls_names(m.pools)  # pending: never recorded
    assert UUID2 not in ls_names(m.mnt / "secrets")
    assert "v2" not in ls_names(m.pool("ext") / "volumes")
    if mode == "readonly":
        assert read(m.vol("v1", "ext") / "capacity") == f"{2 * GiB}\n"
        assert read(m.vol("v1", "ext") / "config.xml") == before[
            "pools/ext/volumes/v1/config.xml"]
        assert {"off"} <= ls_names(m.pools) and UUID in ls_names(m.mnt / "secrets")
    else:
        assert "v1" not in ls_names(m.pool("ext") / "volumes")
        assert not (tmp_path / "ext" / "v1").exists()
        assert "off" not in ls_names(m.pools) and UUID not in ls_names(m.mnt / "secrets")
        assert not list((state_fs.path / "volumes").rglob("v1.json*"))


def rmdir_errno(path: Path):
    try:
        os.rmdir(path)
    except OSError as exc:
        return exc.errno, "rmdir"
    return None, None


def test_rmdir_pool_with_readonly_state_dir_gives_erofs_and_a_line(state_fs, mount_factory,
                                                                    tmp_path):
    """Item 8: EROFS, one error line, no traceback nor 'internal error' in the log (the
    fixture checks the log), and the pool still defined after a remount."""
    m = mount_factory()
    define_pool(m, "p1", tmp_path / "p1", start=False)
    state_fs.readonly()
    assert rmdir_errno(m.pool("p1")) == (errno.EROFS, "rmdir")
    line = assert_one_error_line(m.pool("p1"))
    assert "Read-only file system" in line, line
    assert "p1" in ls_names(m.pools)
    assert "internal error" not in m.log()
    state_fs.writable()
    m.remount()
    assert read(m.pool("p1") / "state") == "inactive\n"
    os.rmdir(m.pool("p1"))
    assert "p1" not in ls_names(m.pools)


def test_start_on_full_state_dir_autostart_done_or_refused(state_fs, mount_factory,
                                                           tmp_path):
    """Item 6: storagefs started on a full state directory: each pool that is to run
    either runs and is recorded so, or is refused (error line) and does not run."""
    m = mount_factory()
    command(define_pool(m, "auto", tmp_path / "auto", start=False) / "autostart", "yes")
    define_pool(m, "was-running", tmp_path / "wr")
    m.stop()
    state_fs.fill()
    m.start()
    names = ("default", "auto", "was-running")
    for name in names:
        p = m.pool(name)
        state = read(p / "state")
        err = read(p / "error")
        if state == "running\n":
            assert "autostart" not in err, f"{name} runs, yet its autostart was refused: {err}"
        else:
            assert state == "inactive\n", (name, state)
            assert_one_error_line(p)
    state_fs.unfill()
    m.remount()
    for name in names:
        assert read(m.pool(name) / "state") == "running\n", name


# ---------------------------------------------------------------- item 5


def test_define_on_nearly_full_state_dir_fails_and_keeps_the_old(state_fs, mount_factory,
                                                                 tmp_path):
    """Item 5: a definition that does not fit fails with ENOSPC (a short write is not
    success), keeps the old definition and leaves no temp file; after a remount
    the pools are as they were."""
    m = mount_factory()
    define_pool(m, "ext", tmp_path / "ext", start=False)
    old = read(m.pool("ext") / "config.xml")
    big = "  <!-- " + "x" * 60000 + " -->\n"
    state_fs.fill(leave=8192)
    assert write_errno(m.pool("ext") / "config.xml",
                       pool_xml("ext", tmp_path / "ext", big)) == (errno.ENOSPC, "write")
    assert "No space left on device" in assert_one_error_line(m.pool("ext"))
    assert read(m.pool("ext") / "config.xml") == old
    os.mkdir(m.pool("big"))
    assert write_errno(m.pool("big") / "config.xml",
                       pool_xml("big", tmp_path / "big", big)) == (errno.ENOSPC, "write")
    assert_one_error_line(m.pool("big"))
    assert read(m.pool("big") / "config.xml") == ""
    assert not state_fs.leftovers(), state_fs.leftovers()
    assert not (state_fs.path / "pools" / "big.json").exists()
    state_fs.unfill()
    m.remount()
    assert read(m.pool("ext") / "config.xml") == old
    assert "big" not in ls_names(m.pools)


def _record(state: Path, name: str) -> Path:
    return state / "pools" / f"{name}.json"


@pytest.mark.log_allows("is unreadable", "was unreadable", "stored definition unusable")
def test_unreadable_pool_records_are_kept_aside_and_shown(mounted, tmp_path):
    """Item 5: at start, a pool record that cannot be used is renamed NAME.json.broken
    (never dropped) and the pool is shown with state 'inaccessible' and the reason in
    its error file; a new config.xml repairs it, rmdir drops it (and its record)."""
    m = mounted
    for name in ("good", "trunc", "types", "link", "dupa", "dupb", "other", "badxml"):
        define_pool(m, name, tmp_path / name, start=False)
    m.stop()
    st = m.state_dir
    rec = _record(st, "trunc")
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) // 2])
    raw = json.loads(_record(st, "types").read_text())
    raw["autostart"] = "yes"
    _record(st, "types").write_text(json.dumps(raw))
    # a symlink to a record elsewhere is not followed (whatever it holds)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(_record(st, "link").read_bytes())
    _record(st, "link").unlink()
    _record(st, "link").symlink_to(elsewhere)
    raw = json.loads(_record(st, "dupb").read_text())
    raw["uuid"] = json.loads(_record(st, "dupa").read_text())["uuid"]
    _record(st, "dupb").write_text(json.dumps(raw))
    raw = json.loads(_record(st, "other").read_text())
    raw["name"] = "good"
    _record(st, "other").write_text(json.dumps(raw))
    raw = json.loads(_record(st, "badxml").read_text())
    raw["config"] = raw["config"].replace("type='dir'", "type='no-such-type'")
    _record(st, "badxml").write_text(json.dumps(raw))
    m.start()

    broken = ("trunc", "types", "link", "dupb", "other")
    reasons = {"trunc": "JSON", "types": "autostart", "link": "symbolic link",
               "dupb": "uuid", "other": "names 'good'", "badxml": "no-such-type"}
    for name in (*broken, "badxml"):
        p = m.pool(name)
        assert name in ls_names(m.pools), f"{name} vanished"
        assert read(p / "state") == "inaccessible\n", name
        line = assert_one_error_line(p)
        assert reasons[name] in line, (name, line)
    for name in broken:
        assert (st / "pools" / f"{name}.json.broken").exists() or \
            (st / "pools" / f"{name}.json.broken").is_symlink(), name
        assert not _record(st, name).exists(), name
    assert elsewhere.exists() and _record(st, "badxml").exists()
    for name in ("good", "dupa"):
        assert read(m.pool(name) / "state") == "inactive\n"
    # a salvaged document is shown, so it can be fixed in place
    assert "<name>other</name>" in read(m.pool("other") / "config.xml")
    assert write_errno(m.pool("trunc") / "state", "running\n") == (errno.EIO, "write")

    m.remount()  # still shown: kept-aside records are read again
    for name in (*broken, "badxml"):
        assert read(m.pool(name) / "state") == "inaccessible\n", name

    write(m.pool("trunc") / "config.xml", pool_xml("trunc", tmp_path / "trunc"))
    sh(f"sed -i 's/dir/dir/' {m.pool('other')}/config.xml")  # the salvaged document, as is
    assert read(m.pool("other") / "state") == "inactive\n"
    write(m.pool("badxml") / "config.xml", pool_xml("badxml", tmp_path / "badxml"))
    os.rmdir(m.pool("types"))
    assert read(m.pool("trunc") / "state") == "inactive\n"
    assert not (st / "pools" / "trunc.json.broken").exists()
    assert not (st / "pools" / "types.json.broken").exists()
    command(m.pool("trunc") / "control", "start")
    m.remount()
    assert read(m.pool("trunc") / "state") == "running\n"
    assert read(m.pool("badxml") / "state") == "inactive\n"
    assert "types" not in ls_names(m.pools)
    assert read(m.pool("link") / "state") == "inaccessible\n"
    assert read(m.pool("other") / "state") == "inactive\n"
    assert not (st / "pools" / "other.json.broken").exists()


@pytest.mark.log_allows("is unreadable", "was unreadable")
def test_unreadable_volume_and_secret_records_are_kept_aside(mounted, tmp_path):
    """Item 5: a volume's record that cannot be read is kept aside; the volume (found on
    its storage) shows the reason in its error file. An unreadable secret record is
    kept aside and the secret still shown; a new document defines it again with the
    value it had."""
    m = mounted
    define_pool(m, "p1", tmp_path / "p1")
    os.mkdir(m.vol("v1", "p1"))
    write(m.vol("v1", "p1") / "config.xml", volume_xml("v1", 2 * GiB))
    s = m.mnt / "secrets" / UUID
    os.mkdir(s)
    write(s / "config.xml", secret_xml(UUID))
    write(s / "value", "passphrase-1")
    m.stop()
    vrec = m.state_dir / "volumes" / "p1" / "v1.json"
    vrec.write_bytes(vrec.read_bytes()[:40])
    srec = m.state_dir / "secrets" / f"{UUID}.json"
    srec.write_bytes(srec.read_bytes()[:30])
    m.start()
    assert "v1" in ls_names(m.pool("p1") / "volumes")
    assert read(m.vol("v1", "p1") / "capacity") == f"{2 * GiB}\n"
    assert "JSON" in assert_one_error_line(m.vol("v1", "p1"))
    assert (vrec.parent / "v1.json.broken").exists() and not vrec.exists()
    assert UUID in ls_names(m.mnt / "secrets"), "the secret vanished"
    assert "JSON" in assert_one_error_line(s)
    assert (srec.parent / f"{UUID}.json.broken").exists()
    m.remount()
    assert UUID in ls_names(m.mnt / "secrets")
    write(s / "config.xml", secret_xml(UUID))
    assert read(s / "value") == "passphrase-1"
    assert not (srec.parent / f"{UUID}.json.broken").exists()
    m.remount()
    assert read(s / "value") == "passphrase-1"
    assert read(s / "config.xml") == secret_xml(UUID)


@pytest.mark.log_allows("left by an interrupted write")
def test_temp_files_of_interrupted_writes_are_removed_at_start(mounted, tmp_path):
    """A crash in the middle of a write leaves `.NAME.XXXX.tmp` beside the intact old
    file; the next start removes it in every directory of the state directory that
    storagefs writes records in (pools, volumes, secrets, kept formats), so none builds
    up over crashes. The default pool's images are storage, not state: left alone."""
    m = mounted
    for name in ("kept", "gone"):
        define_pool(m, name, tmp_path / name)
        os.mkdir(m.pool(name) / "volumes" / "v1")
    command(m.pool("gone") / "control", "stop")
    os.rmdir(m.pool("gone"))  # keeps the formats of its volumes (kept-formats/)
    m.stop()
    st = m.state_dir
    # STATE/run holds what runs (private mounts, secret files, emptied at start by
    # tests/test_tour4_safety.py's rule); STATE/images is the default pool's storage
    dirs = [d for d in (st, *st.rglob("*")) if d.is_dir() and d != st
            and not {st / "images", st / "run"} & {d, *d.parents}]
    names = {str(d.relative_to(st)) for d in dirs}
    assert {"pools", "secrets", "kept-formats"} <= names and \
        any(n.startswith("volumes/") for n in names), names
    planted = [d / ".x.json.0123abcd.tmp" for d in dirs]
    for p in planted:
        p.write_bytes(b"{half")
    image_tmp = st / "images" / ".user-file.tmp"
    image_tmp.write_bytes(b"not ours")
    m.start()
    assert [str(p.relative_to(st)) for p in planted if p.exists()] == []
    assert image_tmp.read_bytes() == b"not ours"
    assert read(m.pool("kept") / "state") == "running\n"
    assert "v1" in ls_names(m.pool("kept") / "volumes")
