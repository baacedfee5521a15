"""Parsers of command lines, names and escaped paths (no mount needed)."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storagefs.errors import StorageError
from storagefs.names import check_name, systemd_escape_path
from storagefs.parsing import parse_yes_no, split_line


def test_command_words_and_blank_lines():
    assert split_line(b"build overwrite\n") == ("build", ("overwrite",))
    assert split_line("  START ") == ("start", ())
    assert split_line(b"   \n") is None
    assert split_line(b"# a comment") is None
    assert split_line("resize --shrink '20 G'") == ("resize", ("--shrink", "20 G"))


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"start\0", b"'unclosed", b"x" * 5000])
def test_bad_command_lines_are_einval(bad):
    with pytest.raises(StorageError) as exc:
        split_line(bad)
    assert exc.value.errno == errno.EINVAL


@given(st.binary(max_size=300))
def test_any_bytes_give_a_command_or_einval(data):
    try:
        cmd = split_line(data)
    except StorageError as exc:
        assert exc.errno == errno.EINVAL and exc.reason
    else:
        assert cmd is None or (cmd[0] and cmd[0] == cmd[0].lower())


def test_yes_no():
    assert parse_yes_no(b"yes\n") is True and parse_yes_no("no") is False
    with pytest.raises(StorageError):
        parse_yes_no(b"maybe")


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a\0b", "x" * 256,
                                 "é" * 128, "tab\there", b"\xff"])
def test_hostile_names_are_refused(bad):
    with pytest.raises(StorageError) as exc:
        check_name(bad)
    assert exc.value.errno == errno.EINVAL


@given(st.text(min_size=1, max_size=80))
def test_accepted_names_are_single_safe_components(name):
    try:
        ok = check_name(name)
    except StorageError:
        return
    assert "/" not in ok and not ok.startswith(".") and len(ok.encode()) <= 255


@pytest.mark.parametrize("path", ["/var/lib/storagefs/images", "/srv/my pool/x-y",
                                  "//a//b/", "/", "/tmp/ä.img", "/a/.b", "/.x"])
def test_escape_matches_systemd_escape(path):
    tool = shutil.which("systemd-escape")
    expected = {"/var/lib/storagefs/images": "var-lib-storagefs-images",
                "/srv/my pool/x-y": "srv-my\\x20pool-x\\x2dy", "//a//b/": "a-b", "/": "-",
                "/tmp/ä.img": "tmp-\\xc3\\xa4.img", "/a/.b": "a-.b", "/.x": "\\x2ex"}[path]
    assert systemd_escape_path(path) == expected
    if tool:
        out = subprocess.run([tool, "--path", path], capture_output=True, text=True).stdout
        assert out.strip() == expected
