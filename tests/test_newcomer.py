"""Issue 10, "For a newcomer": the project documents its own contract (docs/tree.md,
linked from the README; no file outside the clone), that page names every path the
tree really shows, and `storagefs mount` ends with one line that says what it did."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from mount_helpers import define_pool, force_cleanup, storagefs_cmd, write

ROOT = Path(__file__).resolve().parents[1]
TREE_DOC = ROOT / "docs" / "tree.md"


def test_readme_stands_on_its_own():
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme.split("## Run the tests")[0], \
        "the README's user part points outside the clone"
    assert "docs/tree.md" in readme
    assert TREE_DOC.exists()


def test_the_contract_names_every_path_the_tree_shows(mounted):
    m = mounted
    define_pool(m, "p1", m.base / "p1")
    os.mkdir(m.vol("v1.qcow2", "p1"))
    write(m.vol("v1.qcow2", "p1") / "control", "snapshot s1\n")
    doc = TREE_DOC.read_text()
    shown = {
        "root": os.listdir(m.mnt),
        "pool": os.listdir(m.pool("p1")),
        "volume": os.listdir(m.vol("v1.qcow2", "p1")),
        "snapshot": os.listdir(m.vol("v1.qcow2", "p1") / "snapshots" / "s1"),
        "pools": [n for n in os.listdir(m.pools) if n.startswith("by-")],
        "volumes": os.listdir(m.mnt / "volumes"),
    }
    missing = {k: [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])",
                                                     doc)]
               for k, names in shown.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"docs/tree.md does not describe: {missing}"


def test_mount_ends_with_one_line_that_says_what_it_did(tmp_path):
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    try:
        res = subprocess.run([*storagefs_cmd(), "mount", str(mnt), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.strip().splitlines()
        assert len(lines) == 1, res.stdout
        line = lines[0]
        assert str(mnt) in line and str(state) in line, line
        assert "default (running)" in line, line
        assert f"storagefs unmount {mnt}" in line, line
    finally:
        subprocess.run([*storagefs_cmd(), "unmount", str(mnt)], capture_output=True,
                       timeout=60)
        force_cleanup(mnt)


def test_mount_that_cannot_start_says_why_in_one_line(tmp_path):
    res = subprocess.run([*storagefs_cmd(), "mount", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "does not exist" in res.stderr
