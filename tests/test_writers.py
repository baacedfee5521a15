"""Issue 3 section 7: every writer works on config.xml (SPEC "Writers that use
temp files work"), each tested with the real client on a real mount."""

from __future__ import annotations

import errno
import os
import shlex
import stat
import tempfile
import time

import pytest
from mount_helpers import (
    GiB,
    define_pool,
    ls_names,
    pool_xml,
    qemu_info,
    read,
    read_bytes,
    run,
    sh,
    volume_xml,
    write,
    xml_value,
)


@pytest.fixture
def pool1(mounted, tmp_path):
    """An inactive pool p1 with target tmp/p1a; returns (pool dir, old doc, new doc)."""
    p = define_pool(mounted, "p1", tmp_path / "p1a", build=False, start=False)
    old = read(p / "config.xml")
    new = pool_xml("p1", tmp_path / "p1b")
    assert old.replace("p1a", "p1b") == new
    return p, old, new


def _src(tmp_path, doc: str):
    src = tmp_path / "src.xml"
    src.write_text(doc)
    return src


def _assert_applied(p, new, tmp_path):
    assert read(p / "config.xml") == new, "config.xml must read back byte for byte"
    assert os.stat(p / "config.xml").st_size == len(new.encode())
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1b")
    leftovers = ls_names(p) - {
        "config.xml", "status.xml", "state", "autostart", "control", "uuid", "type",
        "capacity", "allocation", "available", "error", "volumes",
    }
    assert not leftovers, f"writer left files behind: {leftovers}"


def test_echo_redirect_writes_config(pool1, tmp_path):
    p, _, new = pool1
    sh(f'echo "$DOC" > {p}/config.xml', env={**os.environ, "DOC": new.rstrip("\n")})
    _assert_applied(p, new, tmp_path)


def test_tee_writes_config(pool1, tmp_path):
    p, _, new = pool1
    sh(f'printf "%s" "$DOC" | tee {p}/config.xml >/dev/null',
       env={**os.environ, "DOC": new})
    _assert_applied(p, new, tmp_path)


def test_cp_writes_config(pool1, tmp_path):
    p, _, new = pool1
    run(["cp", _src(tmp_path, new), p / "config.xml"])
    _assert_applied(p, new, tmp_path)


def test_sed_in_place_edits_config(pool1, tmp_path):
    p, _, new = pool1
    run(["sed", "-i", "s/p1a/p1b/", p / "config.xml"])
    _assert_applied(p, new, tmp_path)


def test_mv_of_scratch_file_onto_config(pool1, tmp_path):
    p, _, new = pool1
    sh(f'cd {p} && printf "%s" "$DOC" > new.xml && mv new.xml config.xml',
       env={**os.environ, "DOC": new})
    _assert_applied(p, new, tmp_path)


def test_mv_of_hidden_scratch_file_onto_config(pool1, tmp_path):
    p, _, new = pool1
    sh(f'cd {p} && printf "%s" "$DOC" > .config.xml.tmp1234 && mv .config.xml.tmp1234 config.xml',
       env={**os.environ, "DOC": new})
    _assert_applied(p, new, tmp_path)


def test_install_replaces_config(pool1, tmp_path):
    p, _, new = pool1
    run(["install", "-m", "0644", _src(tmp_path, new), p / "config.xml"])
    _assert_applied(p, new, tmp_path)


def test_rsync_replaces_config(pool1, tmp_path):
    p, _, new = pool1
    run(["rsync", "--checksum", _src(tmp_path, new), p / "config.xml"])
    _assert_applied(p, new, tmp_path)


def test_rsync_archive_mode_replaces_config_with_times(pool1, tmp_path):
    p, _, new = pool1
    src = _src(tmp_path, new)
    os.utime(src, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    run(["rsync", "-a", src, p / "config.xml"])
    _assert_applied(p, new, tmp_path)
    assert os.stat(p / "config.xml").st_mtime_ns == 1_000_000_000 * 10**9


def test_vim_ex_mode_edits_config(pool1, tmp_path):
    p, _, new = pool1
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}
    run(["vim", "-e", "-s", "-c", "%s/p1a/p1b/", "-c", "wq", p / "config.xml"], env=env,
        timeout=30)
    _assert_applied(p, new, tmp_path)


def test_vim_with_backup_and_swap_edits_config(pool1, tmp_path):
    p, _, new = pool1
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}
    run(["vim", "-e", "-s", "-c", "set backup backupcopy=no swapfile", "-c", "%s/p1a/p1b/",
         "-c", "wq", p / "config.xml"], env=env, timeout=30)
    assert read(p / "config.xml") == new
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1b")


def test_python_write_temp_then_os_replace(pool1, tmp_path):
    p, _, new = pool1
    fd, tmp = tempfile.mkstemp(dir=p, prefix=".config.xml.")
    try:
        os.write(fd, new.encode())
        os.fsync(fd)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, p / "config.xml")
    _assert_applied(p, new, tmp_path)


def test_sed_in_place_on_volume_config_resizes(mounted):
    os.mkdir(mounted.vol("disk1"))
    v = mounted.vol("disk1")
    write(v / "config.xml", volume_xml("disk1", GiB))
    run(["sed", "-i", f"s/>{GiB}</>{2 * GiB}</", v / "config.xml"])
    assert qemu_info(mounted.images / "disk1")["virtual-size"] == 2 * GiB
    assert read(v / "config.xml") == volume_xml("disk1", 2 * GiB)


def test_config_reads_back_byte_for_byte_whatever_the_formatting(pool1, tmp_path):
    p, _, _ = pool1
    doc = ('<?xml version="1.0" encoding="UTF-8"?>\n<!-- managed by ansible: do not edit -->\n'
           f'<pool type="dir">\n\t<name>p1</name>\n\t<target><path>{tmp_path / "p1b"}</path>'
           '</target>   \n</pool>\n\n')
    run(["cp", _src(tmp_path, doc), p / "config.xml"])
    assert read_bytes(p / "config.xml") == doc.encode()
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1b")


def test_rewriting_same_document_changes_nothing(pool1):
    p, old, _ = pool1
    before = os.stat(p / "config.xml")
    uuid = read(p / "uuid")
    time.sleep(0.05)
    sh(f'printf "%s" "$DOC" > {p}/config.xml', env={**os.environ, "DOC": old})
    sh(f'printf "%s" "$DOC" | tee {p}/config.xml >/dev/null', env={**os.environ, "DOC": old})
    after = os.stat(p / "config.xml")
    assert read(p / "config.xml") == old
    assert after.st_mtime_ns == before.st_mtime_ns, "mtime changed though the content did not"
    assert read(p / "uuid") == uuid


def test_rewriting_same_document_by_rename_keeps_mtime(pool1):
    p, old, _ = pool1
    before = os.stat(p / "config.xml").st_mtime_ns
    time.sleep(0.05)
    fd, tmp = tempfile.mkstemp(dir=p, prefix=".config.xml.")
    os.write(fd, old.encode())
    os.close(fd)
    os.replace(tmp, p / "config.xml")
    run(["sed", "-i", "s/p1a/p1a/", p / "config.xml"])
    assert read(p / "config.xml") == old
    assert os.stat(p / "config.xml").st_mtime_ns == before


def test_mtime_changes_when_content_does(pool1):
    p, _, new = pool1
    before = os.stat(p / "config.xml").st_mtime_ns
    time.sleep(0.05)
    write(p / "config.xml", new)
    assert os.stat(p / "config.xml").st_mtime_ns > before


def test_chmod_chown_touch_of_config_round_trip(pool1):
    p, old, _ = pool1
    cfg = p / "config.xml"
    run(["chmod", "0600", cfg])
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    # a definition is never made writable by anyone but root (it is applied with root's
    # rights): a non-root owner only without owner write
    assert run(["chown", "65534:65534", cfg], check=False).returncode != 0
    run(["chmod", "0440", cfg])
    run(["chown", "65534:65534", cfg])
    st = os.stat(cfg)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert run(["chmod", "0640", cfg], check=False).returncode != 0
    run(["touch", "-d", "2001-02-03 04:05:06 UTC", cfg])
    assert os.stat(cfg).st_mtime == 981173106
    assert read(cfg) == old


def test_fsync_is_accepted(pool1, tmp_path):
    p, _, new = pool1
    fd = os.open(p / "config.xml", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, new.encode())
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    _assert_applied(p, new, tmp_path)


def test_o_trunc_then_shorter_document_reads_back_exactly(pool1, tmp_path):
    p, old, new = pool1
    long_doc = old.replace("<target>", "<!-- " + "x" * 500 + " -->\n  <target>")
    write(p / "config.xml", long_doc)
    assert read(p / "config.xml") == long_doc
    write(p / "config.xml", new, flags=os.O_WRONLY | os.O_TRUNC)
    assert read_bytes(p / "config.xml") == new.encode()
    assert os.stat(p / "config.xml").st_size == len(new.encode())


def test_o_trunc_empties_the_buffer_not_the_definition(pool1):
    p, old, _ = pool1
    fd = os.open(p / "config.xml", os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size in (0, len(old.encode()))
    try:
        os.close(fd)
    except OSError:
        pass  # whether an empty document at close() is an error is not the point here
    assert read(p / "config.xml") == old
    assert read(p / "state") == "inactive\n"


def test_truncate_to_zero_keeps_definition(pool1):
    p, old, _ = pool1
    run(["truncate", "-s", "0", p / "config.xml"], check=False)
    assert read(p / "config.xml") == old
    assert read(p / "state") == "inactive\n"


def test_unlink_of_config_destroys_nothing(pool1, tmp_path):
    p, old, new = pool1
    os.unlink(p / "config.xml")
    assert "p1" in ls_names(p.parent)
    assert read(p / "state") == "inactive\n"
    assert xml_value(read(p / "status.xml"), "/pool/target/path") == str(tmp_path / "p1a")
    # the next accepted document replaces the definition
    fd = os.open(p / "config.xml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, new.encode())
    finally:
        os.close(fd)
    _assert_applied(p, new, tmp_path)


def test_xattr_calls_get_enotsup(pool1):
    p, _, _ = pool1
    with pytest.raises(OSError) as exc:
        os.setxattr(p / "config.xml", "user.test", b"1")
    assert exc.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as exc:
        os.getxattr(p / "config.xml", "user.test")
    assert exc.value.errno == errno.ENOTSUP


def test_scratch_files_are_listed_while_they_exist(pool1):
    p, _, _ = pool1
    sh(f"echo scratch > {shlex.quote(str(p))}/.swp-like")
    assert read(p / ".swp-like") == "scratch\n"
    os.unlink(p / ".swp-like")
    assert ".swp-like" not in ls_names(p)
