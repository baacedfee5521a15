"""Issue 10, item 13: Puppet works (SPEC "Scratch files and directories").

Puppet 7's `file` resource makes a lock directory `TARGET<date>-<pid>-<rand>.lock`
beside the file it writes, writes a temp file there too and renames it onto the
target. The manifest below manages a pool directory, its config.xml, its `state`
("running"), a volume directory and the volume's config.xml: the first `puppet
apply` converges, the second changes nothing, an edited config.xml (drift) is
repaired. Puppet's vardir, confdir, codedir, logdir and rundir are under tmp_path.

Scratch directories themselves are tested with plain mkdir/rmdir too: they hold
scratch files only, are listed while they exist, are not persisted, and rmdir
removes them (ENOTEMPTY while they hold a file).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from mount_helpers import ls_names, pool_xml, read, run, sh, volume_xml, xml_value

POOL_FILES = {"config.xml", "status.xml", "state", "autostart", "control", "uuid", "type",
              "capacity", "allocation", "available", "error", "volumes"}


def puppet() -> str:
    found = shutil.which("puppet")
    if not found:
        pytest.fail("puppet is not installed (apt-get install puppet; contrib/install.sh "
                    "--test installs it)")
    return found


def puppet_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def manifest(mnt: Path, target: Path, pool_doc: str, vol_doc: str) -> str:
    pool = f"{mnt}/pools/web"
    vol = f"{pool}/volumes/disk0.img"
    return f"""
file {{ '{target}': ensure => directory }}
file {{ '{pool}': ensure => directory }}
file {{ '{pool}/config.xml':
  ensure  => file,
  content => {puppet_str(pool_doc)},
}}
file {{ '{pool}/state':
  ensure  => file,
  content => "running\\n",
  require => [File['{pool}/config.xml'], File['{target}']],
}}
file {{ '{vol}':
  ensure  => directory,
  require => File['{pool}/state'],
}}
file {{ '{vol}/config.xml':
  ensure  => file,
  content => {puppet_str(vol_doc)},
}}
"""


def apply(tmp_path: Path, pp: Path) -> subprocess.CompletedProcess:
    """puppet apply --detailed-exitcodes: 0 nothing changed, 2 changes, else failures."""
    base = tmp_path / "puppet"
    dirs = {d: base / d for d in ("var", "conf", "code", "log", "run")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    argv = [puppet(), "apply", "--detailed-exitcodes", "--color=false",
            "--vardir", dirs["var"], "--confdir", dirs["conf"], "--codedir", dirs["code"],
            "--logdir", dirs["log"], "--rundir", dirs["run"], pp]
    env = {**os.environ, "HOME": str(base), "LC_ALL": "C.UTF-8"}
    return run(argv, check=False, timeout=300, env=env)


def outcome(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"


def test_puppet_converges_then_changes_nothing_then_repairs_drift(mounted, tmp_path):
    m = mounted
    target = tmp_path / "web"
    pool_doc = pool_xml("web", target)
    vol_doc = volume_xml("disk0.img", 2 << 30)
    pp = tmp_path / "storage.pp"
    pp.write_text(manifest(m.mnt, target, pool_doc, vol_doc))
    pool = m.pool("web")
    vol = m.vol("disk0.img", "web")

    first = apply(tmp_path, pp)
    assert first.returncode == 2, outcome(first)
    assert read(pool / "config.xml") == pool_doc
    assert read(pool / "state") == "running\n"
    assert read(vol / "config.xml") == vol_doc
    assert read(vol / "capacity") == f"{2 << 30}\n"
    assert os.stat(target / "disk0.img").st_size == 2 << 30
    assert ls_names(pool) == POOL_FILES, "Puppet's scratch files or lock directories are left"
    assert ls_names(vol) >= {"config.xml", "status.xml"} and \
        not [n for n in ls_names(vol) if "lock" in n or n.startswith(".")]

    second = apply(tmp_path, pp)
    assert second.returncode == 0, outcome(second)

    # drift: someone edits the pool's definition; Puppet puts it back
    sh(f"sed -i 's|<name>web</name>|<name>web</name>\\n  <!-- edited -->|' {pool}/config.xml")
    assert "edited" in read(pool / "config.xml")
    repaired = apply(tmp_path, pp)
    assert repaired.returncode == 2, outcome(repaired)
    assert read(pool / "config.xml") == pool_doc
    assert read(pool / "state") == "running\n"
    assert xml_value(read(pool / "status.xml"), "/pool/target/path") == str(target)
    stored = (m.state_dir / "pools" / "web.json").read_text()
    assert "edited" not in stored

    again = apply(tmp_path, pp)
    assert again.returncode == 0, outcome(again)
    assert ls_names(pool) == POOL_FILES


@pytest.mark.parametrize("where", ["pool", "volume"])
def test_scratch_directory_holds_scratch_files_and_rmdir_removes_it(mounted, where):
    m = mounted
    os.mkdir(m.vol("v1"))
    d = m.pool() if where == "pool" else m.vol("v1")
    lock = d / "config.xml20261201-4242-1x2y3z.lock"
    os.mkdir(lock, 0o750)
    st = os.stat(lock)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert lock.name in ls_names(d)
    assert os.listdir(lock) == []
    (lock / "tmpfile").write_text("scratch\n")
    assert read(lock / "tmpfile") == "scratch\n"
    os.rename(lock / "tmpfile", lock / "other")
    assert os.listdir(lock) == ["other"]
    with pytest.raises(OSError) as exc:
        os.rmdir(lock)
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as exc:
        os.mkdir(lock)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        os.mkdir(lock / "deeper")  # scratch directories hold scratch files only
    assert exc.value.errno == errno.EPERM
    os.unlink(lock / "other")
    os.rmdir(lock)
    assert lock.name not in ls_names(d)
    with pytest.raises(FileNotFoundError):
        os.stat(lock)
    # not persisted
    os.mkdir(lock)
    m.remount()
    assert lock.name not in ls_names(d)
    assert not list(m.state_dir.rglob("*.lock"))


def test_names_that_are_objects_stay_objects(mounted):
    """A new name in volumes/ is a volume, in pools/ a pool: never a scratch directory;
    names the tree has already are EEXIST."""
    m = mounted
    os.mkdir(m.vol("x.lock"))
    assert read(m.vol("x.lock") / "format") == "raw\n"
    assert (m.images / "x.lock").is_file()
    for taken in (m.pool() / "volumes", m.pool() / "state", m.vol("x.lock") / "snapshots"):
        with pytest.raises(FileExistsError):
            os.mkdir(taken)
