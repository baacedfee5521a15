"""Issue 10 items 9, 11, 12: volumes are made by their document, on a real mount.

- 9: until a volume has held data (nothing but storagefs wrote to it), an accepted
  config.xml re-makes it to match in full (smaller capacity, partial allocation, any
  format qemu-img creates, compat, encryption); after that today's rules hold.
- 11: ``echo 'create NAME CAPACITY [--format F] [--allocation A]' > pools/P/control``.
- 12: status.xml shows <encryption> with its secret, as ``virsh vol-dumpxml`` does.
"""

from __future__ import annotations

import errno
import os
import shlex

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mount_helpers import (
    GiB,
    MiB,
    assert_one_error_line,
    assert_valid,
    command,
    conformance,
    ls_names,
    pool_xml,
    qemu_info,
    read,
    read_bytes,
    run,
    sh,
    valid_commands,
    write,
    write_errno,
    xml_value,
)

from storagefs.errors import InvalidArgument
from storagefs.parsing import CREATE_USAGE, parse_create, parse_pool_command
from storagefs.units import LLONG_MAX, UNITS

SECRET = "8a3e1b6e-0c1e-4d55-9d3b-6d2a3c4b5e6f"
PASSPHRASE = "correct-horse-battery-staple-4242"


def doc(name: str, capacity: int, fmt: str = "raw", allocation: int | None = None,
        target_extra: str = "") -> str:
    alloc = f"  <allocation unit='bytes'>{allocation}</allocation>\n" if allocation else ""
    return (f"<volume type='file'>\n  <name>{name}</name>\n"
            f"  <capacity unit='bytes'>{capacity}</capacity>\n{alloc}"
            f"  <target>\n    <format type='{fmt}'/>\n{target_extra}  </target>\n</volume>\n")


def encryption_el(uuid: str = SECRET) -> str:
    return (f"    <encryption format='luks'>\n"
            f"      <secret type='passphrase' uuid='{uuid}'/>\n    </encryption>\n")


def make_secret(m) -> None:
    s = m.mnt / "secrets" / SECRET
    os.mkdir(s)
    write(s / "config.xml",
          f"<secret ephemeral='no' private='yes'>\n  <uuid>{SECRET}</uuid>\n"
          "  <usage type='volume'>\n    <volume>/x/enc</volume>\n  </usage>\n</secret>\n")
    write(s / "value", PASSPHRASE + "\n")


def blocks(path) -> int:
    return os.stat(path).st_blocks * 512


def guest_write(path, fmt: str = "raw") -> None:
    run(["qemu-io", "-f", fmt, "-c", "write -P 0x5a 0 64k", path])


# ---- item 9: a document written right after mkdir creates what it describes -------------

def test_document_after_mkdir_makes_a_smaller_raw_volume(mounted):
    v = mounted.vol("small")
    os.mkdir(v)
    assert os.stat(v / "path").st_size == GiB
    text = doc("small", 64 * MiB)
    write(v / "config.xml", text)
    assert os.stat(mounted.images / "small").st_size == 64 * MiB
    assert read(v / "capacity") == f"{64 * MiB}\n"
    assert read(v / "config.xml") == text
    assert read(v / "error") == ""
    # still pristine: the next document makes it smaller again
    write(v / "config.xml", doc("small", 16 * MiB))
    assert qemu_info(v / "path")["virtual-size"] == 16 * MiB


def test_document_after_mkdir_makes_a_smaller_qcow2_with_its_options(mounted):
    v = mounted.vol("q.qcow2")
    os.mkdir(v)
    write(v / "config.xml", doc("q.qcow2", 64 * MiB, "qcow2",
                                target_extra="    <compat>1.1</compat>\n"
                                             "    <features><lazy_refcounts/></features>\n"))
    info = qemu_info(v / "path")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * MiB)
    assert info["format-specific"]["data"]["compat"] == "1.1"
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    run(["qemu-img", "check", "-f", "qcow2", v / "path"])


@pytest.mark.parametrize("fmt", ["raw", "qcow", "qcow2", "qed", "vmdk", "vdi", "vpc"])
def test_every_format_qemu_img_creates_can_be_asked_for(mounted, fmt):
    v = mounted.vol("any")
    os.mkdir(v)
    write(v / "config.xml", doc("any", 64 * MiB, fmt))
    info = qemu_info(mounted.images / "any")
    assert info["format"] == fmt
    assert info["virtual-size"] == 64 * MiB
    assert read(v / "format") == f"{fmt}\n"
    assert read(v / "capacity") == f"{64 * MiB}\n"
    status = read_bytes(v / "status.xml")
    assert_valid(status, "storagevol")
    assert xml_value(status, "/volume/target/format/@type") == fmt


@pytest.mark.parametrize("fmt", ["bochs", "cloop", "dmg", "iso", "dir", "fat", "vhd", "ploop",
                                 "cow"])
def test_a_format_qemu_img_cannot_create_is_enotsup_with_the_reason(mounted, fmt):
    v = mounted.vol("v")
    os.mkdir(v)
    before = os.stat(mounted.images / "v")
    config = read(v / "config.xml")
    code, call = write_errno(v / "config.xml", doc("v", 64 * MiB, fmt))
    assert (code, call) == (errno.ENOTSUP, "write")
    line = assert_one_error_line(v)
    assert f"'{fmt}'" in line and "qcow2" in line, line  # the reason, and what can be made
    after = os.stat(mounted.images / "v")
    assert (after.st_ino, after.st_size) == (before.st_ino, GiB)
    assert read(v / "config.xml") == config
    assert [n for n in os.listdir(mounted.images) if n != "v"] == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_partial_allocation_allocates_at_least_that_and_far_less_than_capacity(mounted, fmt):
    v = mounted.vol("part")
    os.mkdir(v)
    write(v / "config.xml", doc("part", 700 * MiB, fmt, allocation=20 * MiB))
    real = mounted.images / "part"
    info = qemu_info(real)
    assert (info["format"], info["virtual-size"]) == (fmt, 700 * MiB)
    assert 20 * MiB <= blocks(real) < 100 * MiB, blocks(real)
    assert int(read(v / "allocation")) >= 20 * MiB
    run(["qemu-img", "check", "-f", fmt, real], check=fmt != "raw")


def test_allocation_above_capacity_is_einval_and_changes_nothing(mounted):
    v = mounted.vol("v")
    os.mkdir(v)
    before = os.stat(mounted.images / "v")
    config = read(v / "config.xml")
    # growing would be allowed; with a bigger allocation nothing at all is done
    code, call = write_errno(v / "config.xml", doc("v", 2 * GiB, allocation=3 * GiB))
    assert (code, call) == (errno.EINVAL, "write")
    assert "allocation" in assert_one_error_line(v)
    after = os.stat(mounted.images / "v")
    assert (after.st_ino, after.st_size, after.st_blocks) == (
        before.st_ino, GiB, before.st_blocks)
    assert read(v / "config.xml") == config


def test_encrypted_volume_made_by_its_document_and_its_status(mounted, tmp_path):
    make_secret(mounted)
    v = mounted.vol("enc.qcow2")
    os.mkdir(v)
    write(v / "config.xml", doc("enc.qcow2", 64 * MiB, "qcow2", target_extra=encryption_el()))
    info = qemu_info(v / "path")
    assert info["encrypted"] is True and info["virtual-size"] == 64 * MiB
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts",
         f"driver=qcow2,file.filename={v / 'path'},encrypt.key-secret=s",
         "-c", "write -P 0x21 0 64k"])


def test_after_other_writes_todays_rules_hold(mounted):
    v = mounted.vol("data")
    os.mkdir(v)
    write(v / "config.xml", doc("data", 64 * MiB))  # pristine: re-made
    guest_write(v / "path")
    code, call = write_errno(v / "config.xml", doc("data", 32 * MiB))
    assert (code, call) == (errno.EINVAL, "write")
    assert "resize --shrink" in assert_one_error_line(v)
    code, call = write_errno(v / "config.xml", doc("data", 64 * MiB, "qcow2"))
    assert (code, call) == (errno.EBUSY, "write")
    assert qemu_info(v / "path")["format"] == "raw"
    # growing, permissions and preallocation still apply
    write(v / "config.xml", doc("data", 96 * MiB, allocation=96 * MiB))
    assert os.stat(v / "path").st_size == 96 * MiB
    assert blocks(v / "path") >= 96 * MiB
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 64k", v / "path"]).stdout
    assert "read 65536/65536" in out


def test_a_volume_stays_pristine_across_a_remount(mounted):
    os.mkdir(mounted.vol("keep"))
    os.mkdir(mounted.vol("used"))
    guest_write(mounted.vol("used") / "path")
    mounted.remount()
    write(mounted.vol("keep") / "config.xml", doc("keep", 8 * MiB))
    assert os.stat(mounted.images / "keep").st_size == 8 * MiB
    code, _ = write_errno(mounted.vol("used") / "config.xml", doc("used", 8 * MiB))
    assert code == errno.EINVAL
    assert os.stat(mounted.images / "used").st_size == GiB


def test_a_resize_by_storagefs_keeps_the_volume_pristine(mounted):
    v = mounted.vol("r")
    os.mkdir(v)
    command(v / "control", "resize 2G")
    write(v / "config.xml", doc("r", 32 * MiB))
    assert os.stat(v / "path").st_size == 32 * MiB


def test_a_document_copied_from_vol_dumpxml_is_accepted(mounted):
    # status.xml of one volume (key, path, physical, timestamps) makes another like it
    src = mounted.vol("src.qcow2")
    os.mkdir(src)
    write(src / "config.xml", doc("src.qcow2", 48 * MiB, "qcow2"))
    dumped = read(src / "status.xml").replace("src.qcow2", "dst.qcow2")
    dst = mounted.vol("dst.qcow2")
    os.mkdir(dst)
    write(dst / "config.xml", dumped)
    assert read(dst / "config.xml") == dumped
    info = qemu_info(dst / "path")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 48 * MiB)
    # one that virsh printed on another host (its path is not this pool's)
    other = conformance("virsh-9.0", "storage", "vol-raw-sparse.xml").read_text()
    other = other.replace("<name>r2</name>", "<name>copied</name>")
    other = other.replace("1073741824", str(80 * MiB))
    os.mkdir(mounted.vol("copied"))
    write(mounted.vol("copied") / "config.xml", other)
    assert os.stat(mounted.images / "copied").st_size == 80 * MiB
    # a fully allocated raw volume's dump has <allocation> a block above <capacity>
    full = mounted.vol("full")
    os.mkdir(full)
    write(full / "config.xml", doc("full", 8 * MiB, allocation=8 * MiB))
    dumped = read(full / "status.xml").replace("<name>full</name>", "<name>full2</name>")
    assert int(xml_value(dumped, "/volume/allocation")) >= 8 * MiB
    os.mkdir(mounted.vol("full2"))
    write(mounted.vol("full2") / "config.xml", dumped)
    assert blocks(mounted.images / "full2") >= 8 * MiB


def test_an_ansible_style_rename_of_a_small_template_works_on_first_use(mounted):
    v = mounted.vol("tpl")
    os.mkdir(v)
    # the way Ansible's template module writes: a temp file in the directory, renamed
    sh(f"cd {shlex.quote(str(v))} && printf %s {shlex.quote(doc('tpl', 100 * MiB))} "
       "> .ansible_tmpXYZconfig.xml && mv .ansible_tmpXYZconfig.xml config.xml")
    assert os.stat(mounted.images / "tpl").st_size == 100 * MiB
    assert read(v / "config.xml") == doc("tpl", 100 * MiB)


# ---- item 11: one line makes a sized volume ------------------------------------------------

def test_create_command_makes_a_sized_volume_in_the_write(mounted):
    p = mounted.pool()
    assert CREATE_USAGE in valid_commands(p)
    sh(f"echo 'create v1.img 64M --format qcow2 --allocation 8M' > {p / 'control'} && "
       f"test -e {mounted.images / 'v1.img'}")
    info = qemu_info(mounted.images / "v1.img")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * MiB)
    assert blocks(mounted.images / "v1.img") >= 8 * MiB
    assert "v1.img" in ls_names(p / "volumes")
    command(p / "control", "create plain 100MB")
    assert os.stat(mounted.images / "plain").st_size == 100 * 1000 * 1000
    assert read(mounted.vol("plain") / "format") == "raw\n"
    command(p / "control", "create s.qcow2 1G")  # the name still picks the format
    assert qemu_info(mounted.images / "s.qcow2")["format"] == "qcow2"
    # made by storagefs: pristine, so a document may still make it smaller
    write(mounted.vol("plain") / "config.xml", doc("plain", MiB))
    assert os.stat(mounted.images / "plain").st_size == MiB


@pytest.mark.parametrize("line,code", [
    ("create", errno.EINVAL),
    ("create v2", errno.EINVAL),
    ("create v2 12Q", errno.EINVAL),
    ("create v2 -1G", errno.EINVAL),
    ("create ../v2 1G", errno.EINVAL),
    ("create .v2 1G", errno.EINVAL),
    ("create v2 1G --format bogus", errno.EINVAL),
    ("create v2 1G --format", errno.EINVAL),
    ("create v2 1G --frobnicate 3", errno.EINVAL),
    ("create v2 1G --allocation 2G", errno.EINVAL),
    ("create v2 1G extra", errno.EINVAL),
    ("create v2 1G --format bochs", errno.ENOTSUP),
    ("create v1 1G", errno.EEXIST),
])
def test_bad_create_lines_are_refused_and_make_nothing(mounted, line, code):
    p = mounted.pool()
    command(p / "control", "create v1 1M")
    got, call = write_errno(p / "control", line + "\n")
    assert (got, call) == (code, "write")
    assert_one_error_line(p)
    assert ls_names(p / "volumes") == {"v1"}
    assert sorted(os.listdir(mounted.images)) == ["v1"]


def test_a_bad_create_line_stops_the_whole_write(mounted, tmp_path):
    p = mounted.pool()
    code, call = write_errno(p / "control", "create a 1M\ncreate b 1M --format nope\n")
    assert (code, call) == (errno.EINVAL, "write")
    assert "nope" in assert_one_error_line(p)
    assert ls_names(p / "volumes") == set()
    # a create after a stop in the same write
    code, _ = write_errno(p / "control", "stop\ncreate a 1M\n")
    assert code == errno.EBUSY
    assert read(p / "state") == "running\n"
    command(p / "state", "inactive")
    assert CREATE_USAGE not in valid_commands(p)
    code, _ = write_errno(p / "control", "create a 1M\n")
    assert code == errno.EBUSY
    assert not (mounted.images / "a").exists()


_names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"),
                               whitelist_characters="-_"), min_size=1, max_size=40
                 ).filter(lambda n: not n.startswith("-"))
_units = st.sampled_from(["", *UNITS])


@given(name=_names, number=st.integers(0, 2**20), unit=_units,
       fmt=st.none() | st.sampled_from(["raw", "qcow2", "vmdk"]),
       alloc=st.none() | st.integers(0, 2**20), order=st.booleans())
@settings(max_examples=200, deadline=None)
def test_create_line_parser_reads_what_was_written(name, number, unit, fmt, alloc, order):
    capacity = number * UNITS.get(unit, 1)
    assume(capacity <= LLONG_MAX)
    opts = []
    if fmt is not None:
        opts += ["--format", fmt]
    if alloc is not None and alloc <= capacity:
        opts.append(f"--allocation={alloc}")
    words = [*opts, name, f"{number}{unit}"] if order else [name, f"{number}{unit}", *opts]
    args = parse_pool_command(" ".join(shlex.quote(w) for w in ["create", *words]))
    assert (args.name, args.capacity, args.format) == (name, capacity, fmt)
    assert args.allocation == (alloc if alloc is not None and alloc <= capacity else None)


@given(st.lists(st.text(max_size=12) | st.sampled_from(["--format", "--allocation", "1G",
                                                        "x", "--", "=", "2G"]), max_size=6))
@settings(max_examples=300, deadline=None)
def test_create_line_parser_refuses_only_with_einval(words):
    try:
        args = parse_create(tuple(words))
    except InvalidArgument as exc:
        assert exc.errno == errno.EINVAL and exc.reason
        return
    assert args.capacity >= 0 and "/" not in args.name
    assert args.allocation is None or args.allocation <= args.capacity + (1 << 20) * 2


# ---- item 12: status.xml shows <encryption> with its secret -------------------------------

@pytest.mark.parametrize("name,fmt", [("enc.raw", "raw"), ("enc.qcow2", "qcow2")])
def test_status_xml_of_a_luks_volume_shows_encryption_and_secret(mounted, name, fmt):
    make_secret(mounted)
    v = mounted.vol(name)
    os.mkdir(v)
    write(v / "config.xml", doc(name, 32 * MiB, fmt, target_extra=encryption_el()))

    def check(status: bytes) -> None:
        assert_valid(status, "storagevol")
        assert xml_value(status, "/volume/target/format/@type") == fmt
        assert xml_value(status, "/volume/target/encryption/@format") == "luks"
        assert xml_value(status, "/volume/target/encryption/secret/@type") == "passphrase"
        assert xml_value(status, "/volume/target/encryption/secret/@uuid") == SECRET
        assert read(v / "format") == f"{fmt}\n"

    check(read_bytes(v / "status.xml"))
    # as libvirt prints it: <encryption> after the permissions and timestamps
    reference = conformance("libvirt", "tests", "storagevolxml2xmlout", "vol-luks.xml")
    tags = ("<encryption", "</encryption", "<secret")
    want = [line.strip() for line in reference.read_text().splitlines()
            if line.strip().startswith(tags)]
    got = [line.strip() for line in read(v / "status.xml").splitlines()
           if line.strip().startswith(tags)]
    assert got == [w.replace("f52a81b2-424e-490c-823d-6bd4235bc572", SECRET) for w in want]
    mounted.remount()
    check(read_bytes(v / "status.xml"))
    assert PASSPHRASE not in read(v / "status.xml")


@pytest.fixture
def small_fs(tmp_path):
    """A 64 MiB tmpfs the test mounts and unmounts (for ENOSPC)."""
    d = tmp_path / "small"
    d.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711", "tmpfs", d])
    try:
        yield d
    finally:
        run(["umount", "-l", d], check=False)


def test_a_document_that_does_not_fit_changes_nothing(mounted, small_fs):
    p = mounted.pool("small")
    os.mkdir(p)
    write(p / "config.xml", pool_xml("small", small_fs))
    command(p / "control", "start")
    v = p / "volumes" / "v"
    os.mkdir(v)
    real = small_fs / "v"
    # pristine: re-made beside the old file, which is kept when the new one cannot be
    code, call = write_errno(v / "config.xml", doc("v", 200 * MiB, allocation=200 * MiB))
    assert (code, call) == (errno.ENOSPC, "write")
    assert os.stat(real).st_size == GiB
    assert os.listdir(small_fs) == ["v"]
    # holding data: growing and preallocating is checked before the file grows
    guest_write(v / "path")
    code, call = write_errno(v / "config.xml", doc("v", 2 * GiB, allocation=2 * GiB))
    assert (code, call) == (errno.ENOSPC, "write")
    assert "space" in assert_one_error_line(v)
    assert os.stat(real).st_size == GiB
    assert blocks(real) < MiB


def test_names_of_255_bytes_keep_their_documents_across_a_remount(mounted, tmp_path):
    # the state record of a name that long cannot be NAME.json
    vname = "v" * 255
    os.mkdir(mounted.vol(vname))
    text = doc(vname, 32 * MiB)
    write(mounted.vol(vname) / "config.xml", text)
    assert os.stat(mounted.images / vname).st_size == 32 * MiB
    pname = "p" * 255
    os.mkdir(mounted.pool(pname))
    ptext = pool_xml(pname, tmp_path / "long")
    write(mounted.pool(pname) / "config.xml", ptext)
    mounted.remount()
    assert read(mounted.vol(vname) / "config.xml") == text
    assert read(mounted.pool(pname) / "config.xml") == ptext
    # and our temp files beside such a volume (clone, wipe) fit too
    qname, cname = "q" * 249 + ".qcow2", "c" * 249 + ".qcow2"
    os.mkdir(mounted.vol(qname))
    command(mounted.vol(qname) / "control", f"clone {cname}")
    assert qemu_info(mounted.images / cname)["format"] == "qcow2"
    command(mounted.vol(cname) / "control", "wipe")
    assert qemu_info(mounted.images / cname)["virtual-size"] == GiB
    os.rmdir(mounted.vol(vname))
    os.rmdir(mounted.pool(pname))
    mounted.remount()
    assert vname not in ls_names(mounted.pool() / "volumes")
    assert pname not in ls_names(mounted.pools)


@pytest.mark.parametrize("fmt", ["qcow2", "qed", "vdi", "vpc"])
def test_a_size_the_format_cannot_hold_is_efbig(mounted, fmt):
    p = mounted.pool()
    huge = (1 << 63) - 1
    code, call = write_errno(p / "control", f"create big --format {fmt} {huge}\n")
    assert (code, call) == (errno.EFBIG, "write")
    assert_one_error_line(p)
    assert ls_names(p / "volumes") == set()
    v = mounted.vol("v")
    os.mkdir(v)
    code, call = write_errno(v / "config.xml", doc("v", huge, fmt))
    assert (code, call) == (errno.EFBIG, "write")
    assert os.stat(mounted.images / "v").st_size == GiB
    write(v / "config.xml", doc("v", 64 * MiB, fmt))
    if fmt == "qcow2":
        code, call = write_errno(v / "control", f"resize {huge}\n")
        assert (code, call) == (errno.EFBIG, "write")
        assert qemu_info(v / "path")["virtual-size"] == 64 * MiB
    assert sorted(os.listdir(mounted.images)) == ["v"]


def test_luks_cipher_of_the_document_is_what_the_volume_gets_and_shows(mounted):
    make_secret(mounted)
    v = mounted.vol("c.raw")
    os.mkdir(v)
    cipher = ("    <encryption format='luks'>\n"
              f"      <secret type='passphrase' uuid='{SECRET}'/>\n"
              "      <cipher name='serpent' size='256' mode='cbc' hash='sha256'/>\n"
              "      <ivgen name='plain64' hash='sha256'/>\n    </encryption>\n")
    write(v / "config.xml", doc("c.raw", 16 * MiB, target_extra=cipher))
    data = qemu_info(v / "path")["format-specific"]["data"]
    assert (data["cipher-alg"], data["cipher-mode"], data["hash-alg"], data["ivgen-alg"]) == (
        "serpent-256", "cbc", "sha256", "plain64")
    reference = conformance("libvirt", "tests", "storagevolxml2xmlout", "vol-luks-cipher.xml")
    tags = ("<encryption", "</encryption", "<secret", "<cipher", "<ivgen")
    want = [line.strip() for line in reference.read_text().splitlines()
            if line.strip().startswith(tags)]
    got = [line.strip() for line in read(v / "status.xml").splitlines()
           if line.strip().startswith(tags)]
    assert got == [w.replace("f52a81b2-424e-490c-823d-6bd4235bc572", SECRET) for w in want]
    assert_valid(read_bytes(v / "status.xml"), "storagevol")
    # a cipher qemu does not know is EINVAL, and the volume stays as it was
    before = os.stat(v / "path")
    code, call = write_errno(v / "config.xml", doc("c.raw", 16 * MiB, target_extra=cipher.replace(
        "serpent", "rot13")))
    assert (code, call) == (errno.EINVAL, "write")
    assert os.stat(v / "path").st_ino == before.st_ino
    code, _ = write_errno(v / "config.xml", doc("c.raw", 16 * MiB, target_extra=cipher.replace(
        "'cbc'", "'cbc,preallocation=full'")))
    assert code == errno.EINVAL
    assert os.stat(v / "path").st_ino == before.st_ino
