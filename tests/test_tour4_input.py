"""Tour 4 (input): what documents, queries and libvirt's files say never reaches
outside the mount or a host tool's options.

- import-libvirt refuses a pool name or uuid storagefs would not take before it
  makes anything (a dry run says the same), and a definition without a uuid is
  "unchanged" on a second run;
- a source host, name, device or directory that would become a host tool's option
  (starts with '-'), a host that is no host name or address, '..' in a source
  directory or dataset and a port outside 1-65535 are refused at define / at the
  sources/ query write, before any tool runs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from mount_helpers import (
    assert_one_error_line,
    ls_names,
    read,
    storagefs_cmd,
    write_errno,
)


def import_dir(m, conf: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*storagefs_cmd(), "import-libvirt", "--mount", str(m.mnt), "--run-dir",
         str(run_dir), *extra, str(conf)], capture_output=True, text=True, timeout=120)


# ---- A: names and uuids of libvirt's files ----------------------------------------
BAD_NAMES = ["../../t4evil", "../t4evil", "..", ".hidden", "a/b", "tab\tname"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_import_refuses_a_name_storagefs_would_not_take_before_touching_anything(
        mounted, tmp_path, name):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    (conf / "autostart").mkdir()
    target = tmp_path / "x"
    (conf / "e.xml").write_text(
        f"<pool type='dir'><name>{name}</name>"
        "<uuid>11111111-2222-3333-4444-777777777777</uuid>"
        f"<target><path>{target}</path></target></pool>")
    before = ls_names(mounted.pools)
    outside = {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()}
    res = import_dir(mounted, conf, run_dir, "--dry-run")
    assert res.returncode == 2, res
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"would skip {name}: pool name"), lines
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2, res
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped {name}: pool name"), lines
    assert lines[0].split(": ", 1)[1] == \
        import_dir(mounted, conf, run_dir, "--dry-run").stdout.split(": ", 1)[1].strip()
    assert ls_names(mounted.pools) == before
    now = {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()}
    assert now == outside, now - outside


def test_import_refuses_a_uuid_that_is_not_one_and_never_follows_it(mounted, tmp_path):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    # mnt/pools/by-uuid/../../../evil is tmp_path/evil: a link there must not be read
    (tmp_path / "evil").symlink_to("/nowhere/victim")
    (conf / "u.xml").write_text(
        "<pool type='dir'><name>u</name><uuid>../../../evil</uuid>"
        f"<target><path>{tmp_path / 'u'}</path></target></pool>")
    for extra, action in ((("--dry-run",), "would skip"), ((), "skipped")):
        res = import_dir(mounted, conf, run_dir, *extra)
        assert res.returncode == 2, res
        assert res.stdout.splitlines() == [
            f"{action} u: uuid '../../../evil' is not a uuid"], res.stdout
    assert "u" not in ls_names(mounted.pools)


def test_import_of_a_definition_without_uuid_is_unchanged_the_second_time(
        mounted, tmp_path):
    conf, run_dir = tmp_path / "lv2", tmp_path / "lvrun"
    conf.mkdir()
    run_dir.mkdir()
    doc = ("<pool type='dir'><name>other</name>"
           f"<target><path>{tmp_path / 'other'}</path></target></pool>")
    (conf / "other.xml").write_text(doc)
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 0 and res.stdout.startswith("imported other: dir"), res
    uuid = read(mounted.pool("other") / "uuid").strip()
    config = (mounted.pool("other") / "config.xml").read_bytes()
    for extra in (("--dry-run",), ()):
        res = import_dir(mounted, conf, run_dir, *extra)
        assert res.returncode == 0, res
        assert res.stdout.splitlines() == [
            f"unchanged other: already imported (uuid {uuid})"], res.stdout
    assert (mounted.pool("other") / "config.xml").read_bytes() == config
    # another document of that name is still another pool's name
    (conf / "other.xml").write_text(doc.replace("/other<", "/other2<"))
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2, res
    assert res.stdout.startswith(
        f"skipped other: the name is taken by pool 'other' with uuid {uuid}"), res.stdout
    # and a document with another uuid too
    (conf / "other.xml").write_text(
        doc.replace("<name>other</name>",
                    "<name>other</name><uuid>11111111-2222-3333-4444-888888888888</uuid>"))
    res = import_dir(mounted, conf, run_dir)
    assert res.returncode == 2 and res.stdout.startswith("skipped other: the name is"), res
