"""Issue 10, item 15: what `unlink` keeps stays visible. `rm config.xml` destroys
nothing (SPEC "Writers that use temp files work"), so the next `cat config.xml`
shows the definition at once, not ENOENT until the next `ls`; and the writers that
unlink or rename the target and then create it anew (install, vim) still work.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mount_helpers import define_pool, ls_names, pool_xml, read, run, sh, xml_value

UUID = "5d3a7b1e-9c44-4f0e-8e0f-2b6f3c9d1a77"


def secret_xml(uuid: str = UUID) -> str:
    return (f"<secret ephemeral='no' private='no'>\n  <uuid>{uuid}</uuid>\n"
            f"  <usage type='volume'>\n    <volume>/x/enc.qcow2</volume>\n  </usage>\n"
            "</secret>\n")


def objects(m, tmp_path) -> dict:
    """A pool, a volume with a document of its own, and a secret: each one's directory."""
    p = define_pool(m, "p1", tmp_path / "p1")
    os.mkdir(p / "volumes" / "v1")
    s = m.mnt / "secrets" / UUID
    os.mkdir(s)
    with open(s / "config.xml", "w") as f:
        f.write(secret_xml())
    return {"pool": p, "volume": p / "volumes" / "v1", "secret": s}


@pytest.mark.parametrize("what", ["pool", "volume", "secret"])
def test_rm_config_then_cat_shows_the_definition(mounted, tmp_path, what):
    d = objects(mounted, tmp_path)[what]
    before = read(d / "config.xml")
    res = sh(f"cd {d} && rm config.xml && cat config.xml && stat -c %s config.xml",
             check=False)
    assert res.returncode == 0, f"rm config.xml; cat config.xml: {res.stderr}"
    assert res.stdout == before + f"{len(before.encode())}\n"
    # other processes, and a listing, see it too; nothing was destroyed
    assert read(d / "config.xml") == before
    assert "config.xml" in ls_names(d)
    if what == "pool":
        assert read(d / "state") == "running\n"


def test_rm_config_repeated_then_cat_from_many_processes(mounted, tmp_path):
    """Each unlink leaves the file visible to everyone else at once (no ls between)."""
    p = objects(mounted, tmp_path)["pool"]
    before = read(p / "config.xml")
    script = "for i in $(seq 20); do rm config.xml || exit 1; cat config.xml > /dev/null || " \
             "exit 2; test -e config.xml || exit 3; done"
    res = sh(f"cd {p} && {script}", check=False)
    assert res.returncode == 0, res.stderr
    assert read(p / "config.xml") == before


def test_unlink_then_exclusive_create_in_one_process_replaces_the_definition(mounted,
                                                                            tmp_path):
    """What GNU install does (unlink, then open O_CREAT|O_EXCL), while another process
    reads the file in between and sees the old definition."""
    p = objects(mounted, tmp_path)["pool"]
    before = read(p / "config.xml")
    new = pool_xml("p1", tmp_path / "p1")  # the same target, other bytes (a comment)
    new = new.replace("<pool type='dir'>\n", "<pool type='dir'>\n  <!-- installed -->\n")
    code = (
        "import os, subprocess, sys\n"
        "p, new = sys.argv[1], sys.argv[2].encode()\n"
        "os.unlink(p)\n"
        "seen = subprocess.run(['cat', p], capture_output=True).stdout\n"
        "fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
        "os.write(fd, new)\n"
        "os.close(fd)\n"
        "sys.stdout.buffer.write(seen)\n")
    res = subprocess.run([sys.executable, "-c", code, str(p / "config.xml"), new],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == before, "another process did not see config.xml after the unlink"
    assert read(p / "config.xml") == new
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1")


def test_install_and_vim_still_replace_a_volume_config(mounted, tmp_path):
    v = objects(mounted, tmp_path)["volume"]
    doc = read(v / "config.xml")
    grown = doc.replace("<capacity unit='bytes'>1073741824</capacity>",
                        "<capacity unit='bytes'>2147483648</capacity>")
    assert grown != doc
    src = tmp_path / "vol.xml"
    src.write_text(grown)
    run(["install", "-m", "0644", src, v / "config.xml"])
    assert read(v / "config.xml") == grown
    assert read(v / "capacity") == "2147483648\n"
    home = tmp_path / "home"
    home.mkdir()
    run(["vim", "-e", "-s", "-c", "set backup backupcopy=no", "-c", "%s/2147483648/3221225472/",
         "-c", "wq", v / "config.xml"], env={**os.environ, "HOME": str(home), "TERM": "dumb"},
        timeout=30)
    assert read(v / "capacity") == "3221225472\n"
    assert ls_names(v) >= {"config.xml"} and not [n for n in ls_names(v) if n.endswith("~")]
