"""The parts both iSCSI pool types share (storagefs/backends/iscsi_source.py): the portal
a user gives `find_sources` (HOST[:PORT]) and the pool names made from target IQNs."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mount_helpers import assert_valid

from storagefs.backends.iscsi_source import (
    parse_portal,
    pool_name_for,
    portal,
    source_documents,
)
from storagefs.errors import StorageError
from storagefs.names import check_name
from storagefs.xml.pool import parse_pool

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_hostname = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.none() | st.integers(1, 65535)


@given(st.one_of(_hostname, _ipv4, _ipv6), _port)
def test_a_portal_as_libvirt_writes_it_parses_back(host, port):
    text = portal(host, port)
    assert parse_portal(text) == (host, port or 3260)
    if port is None and ":" not in host:
        assert parse_portal(host) == (host, None)


@given(st.text(max_size=40))
def test_any_query_is_a_portal_or_einval(text):
    try:
        host, port = parse_portal(text)
    except StorageError as exc:
        assert exc.errno == errno.EINVAL
        return
    assert host and not any(c.isspace() or c in "/@?#[]" for c in host)
    assert port is None or 0 < port < 65536


@pytest.mark.parametrize("bad", ["", "host:", "host:0", "host:65536", "host:x", "a b",
                                 "[::1", "[::1]x", "h/x", "u@h", "host:３２６０"])
def test_what_is_no_portal_is_refused(bad):
    with pytest.raises(StorageError) as exc:
        parse_portal(bad)
    assert exc.value.errno == errno.EINVAL


@given(st.text(min_size=1, max_size=300).filter(lambda s: "\0" not in s))
def test_a_name_made_from_any_target_name_is_a_valid_pool_name(target):
    name = pool_name_for(target)
    assert check_name(name, "pool name") == name


_iqn = st.from_regex(r"iqn\.20[0-9]{2}-(0[1-9]|1[0-2])\.[a-z]{2,5}\.[a-z0-9]{1,12}"
                     r"(:[A-Za-z0-9.:/_+-]{1,190})?", fullmatch=True)


@given(st.lists(_iqn, max_size=6))
def test_documents_have_distinct_names_one_per_target(targets):
    docs = source_documents("iscsi-direct", "127.0.0.1", 3260, targets, "iqn.x:init")
    pools = [parse_pool(d.encode()) for d in docs]
    assert [p.source.devices[0].path for p in pools] == list(dict.fromkeys(targets))
    assert len({p.name for p in pools}) == len(pools)
    for d in docs[:1]:
        assert_valid(d, "storagepool")
