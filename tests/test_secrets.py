"""secrets/ on a real mount, and LUKS volumes that use them (issue 4)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from mount_helpers import MiB, assert_one_error_line, qemu_info, read, run, write, write_errno

UUID = "8a3e1b6e-0c1e-4d55-9d3b-6d2a3c4b5e6f"
VALUE = "correct-horse-battery-staple-4242"


def secret_xml(uuid: str = UUID, private: str = "no", usage: str = "/x/enc.qcow2") -> str:
    return (f"<secret ephemeral='no' private='{private}'>\n  <uuid>{uuid}</uuid>\n"
            f"  <usage type='volume'>\n    <volume>{usage}</volume>\n  </usage>\n</secret>\n")


def make_secret(m, uuid: str = UUID, private: str = "no") -> os.PathLike:
    s = m.mnt / "secrets" / uuid
    os.mkdir(s)
    assert os.listdir(s) == ["config.xml"]
    write(s / "config.xml", secret_xml(uuid, private))
    write(s / "value", VALUE + "\n")
    return s


def test_secret_defined_with_root_only_value(mounted):
    s = make_secret(mounted)
    assert sorted(os.listdir(s)) == ["config.xml", "error", "value"]
    assert read(s / "config.xml") == secret_xml()
    assert stat.S_IMODE(os.stat(s / "value").st_mode) == 0o600
    assert read(s / "value") == VALUE  # echo's newline is not part of the value
    stored = mounted.state_dir / "secrets"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o700
    assert (stored / f"{UUID}.value").read_text() == VALUE
    os.rmdir(s)
    assert not (stored / f"{UUID}.value").exists()
    assert os.listdir(mounted.mnt / "secrets") == []


def test_private_secret_value_cannot_be_read(mounted):
    s = make_secret(mounted, private="yes")
    assert stat.S_IMODE(os.stat(s / "value").st_mode) == 0o200
    with pytest.raises(PermissionError):
        read(s / "value")
    code, _ = write_errno(s / "config.xml", secret_xml(private="no"))
    assert code == errno.EPERM
    assert "private" in assert_one_error_line(s)


@pytest.mark.parametrize("name", ["not-a-uuid", "8A3E1B6E0C1E4D559D3B6D2A3C4B5E6F"])
def test_secret_directory_must_be_a_canonical_uuid(mounted, name):
    with pytest.raises(OSError) as exc:
        os.mkdir(mounted.mnt / "secrets" / name)
    assert exc.value.errno == errno.EINVAL


def test_secret_document_uuid_must_match_directory(mounted):
    s = mounted.mnt / "secrets" / UUID
    os.mkdir(s)
    code, call = write_errno(s / "config.xml", secret_xml("11111111-2222-3333-4444-555555555555"))
    assert (code, call) == (errno.EINVAL, "write")
    assert read(s / "config.xml") == ""


def luks_volume_xml(name: str, capacity: int, fmt: str) -> str:
    return (f"<volume>\n  <name>{name}</name>\n  <capacity unit='bytes'>{capacity}</capacity>\n"
            f"  <target>\n    <format type='{fmt}'/>\n    <encryption format='luks'>\n"
            f"      <secret type='passphrase' uuid='{UUID}'/>\n    </encryption>\n"
            "  </target>\n</volume>\n")


@pytest.mark.parametrize("name,fmt", [("enc.qcow2", "qcow2"), ("enc.raw", "raw")])
def test_luks_volume_created_resized_and_secret_appears_nowhere_else(mounted, tmp_path,
                                                                     name, fmt):
    make_secret(mounted, private="yes")
    v = mounted.vol(name)
    os.mkdir(v)
    write(v / "config.xml", luks_volume_xml(name, 64 * MiB, fmt))
    info = qemu_info(v / "path")
    assert info["encrypted"] is True
    pw = tmp_path / "pw"
    pw.write_text(VALUE)
    key = "encrypt.key-secret" if fmt == "qcow2" else "key-secret"
    driver = "qcow2" if fmt == "qcow2" else "luks"
    opts = f"driver={driver},file.filename={v / 'path'},{key}=s"
    run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts", opts,
         "-c", "write -P 0x21 0 64k"])
    write(v / "control", "resize 128M\n")
    assert read(v / "capacity") == f"{128 * MiB}\n"
    out = run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts", opts,
               "-c", "read -P 0x21 0 64k"]).stdout
    assert "read 65536/65536" in out
    pw.unlink()
    # the value is in secrets/UUID/value (write-only here) and nowhere else
    found = []
    for root in (mounted.mnt / "pools", mounted.mnt / "volumes", mounted.mnt / "README"):
        res = run(["grep", "-rlF", VALUE, str(root)], check=False)
        found += res.stdout.split()
    assert found == []
    assert VALUE not in mounted.log()
    leftovers = [p for p in mounted.state_dir.rglob("*")
                 if p.is_file() and VALUE.encode() in p.read_bytes()]
    assert leftovers == [mounted.state_dir / "secrets" / f"{UUID}.value"]


def test_clone_of_a_luks_volume_keeps_encryption_and_its_secret(mounted, tmp_path):
    make_secret(mounted, private="yes")
    v = mounted.vol("enc.qcow2")
    os.mkdir(v)
    write(v / "config.xml", luks_volume_xml("enc.qcow2", 64 * MiB, "qcow2"))
    pw = tmp_path / "pw"
    pw.write_text(VALUE)
    opts = "driver=qcow2,file.filename={},encrypt.key-secret=s"
    run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts",
         opts.format(v / "path"), "-c", "write -P 0x33 0 64k"])
    write(v / "control", "clone copy.qcow2\n")
    c = mounted.vol("copy.qcow2")
    assert qemu_info(c / "path")["encrypted"] is True
    assert f"uuid='{UUID}'" in read(c / "config.xml")
    write(c / "control", "resize 96M\n")  # needs the secret: found through the clone's config
    assert read(c / "capacity") == f"{96 * MiB}\n"
    out = run(["qemu-io", "--object", f"secret,id=s,file={pw}", "--image-opts",
               opts.format(c / "path"), "-c", "read -P 0x33 0 64k"]).stdout
    assert "read 65536/65536" in out
    code, _ = write_errno(v / "control", "clone plain.raw --format raw\n")
    assert code == errno.ENOTSUP
