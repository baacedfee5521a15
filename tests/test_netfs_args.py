"""netfs and gluster pools without a server: the mount(8) command lines libvirt's
storage_backend_fs.c would run (NFS and CIFS have no kernel client on this machine, so
these lines are all that is tested of them), discovery documents, and the parsers of
``showmount`` and ``gluster --xml`` output (captured from the real GlusterFS 10.3 CLI
into tests/data)."""

from __future__ import annotations

import errno
from pathlib import Path

import corpus
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storagefs.backends import glustercli
from storagefs.backends.gluster import GlusterBackend
from storagefs.backends.netfs import (
    mount_argv,
    mount_source,
    parse_showmount,
    source_document,
    source_name,
)
from storagefs.errors import StorageError
from storagefs.names import check_name
from storagefs.xml.pool import parse_pool
from storagefs.xml.safe import XmlError

DATA = Path(__file__).parent / "data"


def corpus_pool(name: str):
    return parse_pool(corpus.read(f"tests/storagepoolxml2xmlin/{name}"))


def netfs(host="h", dir="/export", fmt=None, ver=None, opts=""):
    fmt_el = f"<format type='{fmt}'/>" if fmt else ""
    ver_el = f"<protocol ver='{ver}'/>" if ver else ""
    ns = " xmlns:fs='http://libvirt.org/schemas/storagepool/fs/1.0'" if opts else ""
    mo = ("<fs:mount_opts>" + "".join(f"<fs:option name='{o}'/>" for o in opts.split())
          + "</fs:mount_opts>") if opts else ""
    return parse_pool(f"<pool type='netfs'{ns}><name>p</name><source><host name='{host}'/>"
                      f"<dir path='{dir}'/>{fmt_el}{ver_el}</source><target><path>/mnt/p"
                      f"</path></target>{mo}</pool>".encode())


# ---- mount(8) command lines, as libvirt builds them ('--' added by storagefs) ----------
@pytest.mark.parametrize("doc, argv", [
    ("pool-netfs.xml", ["mount", "-o", "nodev,nosuid,noexec", "-t", "nfs",
                        "--", "localhost:/var/lib/libvirt/images", "T"]),
    ("pool-netfs-protocol-ver.xml", ["mount", "-o", "nodev,nosuid,noexec,nfsvers=4.1", "-t",
                                     "nfs", "--", "localhost:/var/lib/libvirt/images", "T"]),
    ("pool-netfs-ns-mountopts.xml", ["mount", "-o", "nodev,nosuid,noexec,sync,lazytime,"
                                     "nfsvers=3", "-t", "nfs",
                                     "--", "localhost:/var/lib/libvirt/images", "T"]),
    ("pool-netfs-cifs.xml", ["mount", "-o", "nodev,nosuid,noexec,guest", "-t", "cifs",
                             "--", "//example.com/samba_share", "T"]),
    ("pool-netfs-gluster.xml", ["mount", "-o", "nodev,nosuid,noexec,direct-io-mode=1", "-t",
                                "glusterfs", "--", "example.com:/volume", "T"]),
    ("pool-netfs-gluster-without-slash.xml", ["mount", "-o",
                                              "nodev,nosuid,noexec,direct-io-mode=1", "-t",
                                              "glusterfs", "--", "example.com:volume", "T"]),
    ("pool-netfs-auto.xml", ["mount", "-o", "nodev,nosuid,noexec",
                             "--", "localhost:/var/lib/libvirt/images", "T"]),
])
def test_mount_command_lines_of_the_corpus_documents(doc, argv):
    assert mount_argv(corpus_pool(doc), "T") == argv


def test_nfs_protocol_version_reaches_mount_so_v4_only_servers_work():
    assert "nodev,nosuid,noexec,nfsvers=4" in mount_argv(netfs(fmt="nfs", ver="4"), "T")
    # auto (mount picks nfs for HOST:DIR) gets it too; cifs and glusterfs have no nfsvers
    assert "nodev,nosuid,noexec,nfsvers=4" in mount_argv(netfs(ver="4"), "T")
    # and a cifs or glusterfs document that names one is refused as libvirt refuses it
    with pytest.raises(XmlError, match="protocol ver unsupported"):
        netfs(fmt="cifs", ver="4")


def test_sources_of_ipv6_hosts_and_cifs_shares():
    assert mount_source(netfs(host="fd00::1", fmt="nfs")) == "[fd00::1]:/export"
    assert mount_source(netfs(fmt="cifs", dir="/share")) == "//h/share"
    assert mount_source(netfs(fmt="cifs", dir="share")) == "//h/share"


def test_a_source_without_host_or_dir_is_refused():
    pool = netfs()
    pool.source.hosts = []
    with pytest.raises(StorageError) as err:
        mount_source(pool)
    assert err.value.errno == errno.EINVAL


# ---- gluster: URLs, keys and the private mount ---------------------------------------------
@pytest.mark.parametrize("doc, subdir, url", [
    ("pool-gluster.xml", "/", "gluster://localhost/volume/img.qcow2"),
    ("pool-gluster-sub.xml", "/sub/", "gluster://localhost/volume/sub/img.qcow2"),
])
def test_gluster_volume_urls_as_libvirt_formats_them(doc, subdir, url):
    b = GlusterBackend(corpus_pool(doc))
    assert b.subdir == subdir
    assert b.url_of("img.qcow2") == url
    src = "localhost:/volume" + subdir.rstrip("/")
    argv = b.mount_argv("/run/x")
    assert argv[:4] == ["mount", "-t", "glusterfs", "-o"] and argv[-2:] == [src, "/run/x"]
    assert argv[4].startswith("nodev,nosuid,noexec,direct-io-mode=1,attribute-timeout=0,"
                              "entry-timeout=0,xlator-option=*md-cache.md-cache-timeout=0,"
                              "log-file=/run/x.log")


def test_gluster_url_of_a_port_and_of_odd_names():
    pool = corpus_pool("pool-gluster.xml")
    pool.source.hosts[0].port = 24008
    b = GlusterBackend(pool)
    assert b.url_of("a b%.raw") == "gluster://localhost:24008/volume/a%20b%25.raw"
    assert "server-port=24008" in b.mount_argv("/m")[4]


# ---- gluster --xml ------------------------------------------------------------------------
def test_volume_info_of_the_real_cli():
    [vol] = glustercli.parse_volume_info((DATA / "gluster-volume-info.xml").read_bytes())
    assert (vol.name, vol.status, vol.type, vol.started) == ("hv1", "Started", "Distribute",
                                                             True)
    assert vol.bricks == ["vm:/tmp/gb-h/srv/bricks/hv1"]
    assert vol.options["network.ping-timeout"] == "5"
    [stopped] = glustercli.parse_volume_info(
        (DATA / "gluster-volume-info-stopped.xml").read_bytes())
    assert not stopped.started


def test_volume_info_of_a_missing_volume_is_enoent():
    with pytest.raises(StorageError) as err:
        glustercli.parse_volume_info((DATA / "gluster-volume-info-missing.xml").read_bytes())
    assert err.value.errno == errno.ENOENT and "Volume does not exist" in err.value.reason


@given(st.binary(max_size=300))
def test_gluster_output_parser_never_fails_but_with_storage_error(data):
    try:
        glustercli.parse_volume_info(data)
    except StorageError as exc:
        assert exc.errno in (errno.EIO, errno.ENOENT)


_EXPORT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                  max_size=20).map(lambda s: "/" + s.strip())
_CLIENTS = st.sampled_from(["*", "192.168.1.0/24", "(everyone)", "host.example"])


@given(st.lists(st.tuples(_EXPORT, _CLIENTS), max_size=5))
def test_showmount_exports_with_spaces_in_their_paths(exports):
    text = "".join(f"{path}{' ' * 3}{clients}\n" for path, clients in exports)
    assert parse_showmount(text + "\n") == [path for path, _ in exports]


def test_showmount_of_the_documented_form():
    text = "/srv/nfs/images  192.168.1.0/24\n/export with space *\n"
    assert parse_showmount(text) == ["/srv/nfs/images", "/export with space"]


# ---- discovery documents ------------------------------------------------------------------
@given(st.lists(st.text(min_size=1, max_size=40), max_size=6))
def test_discovered_names_are_valid_and_distinct(wanted):
    taken: set[str] = set()
    names = [source_name(w, taken) for w in wanted]
    assert len(set(names)) == len(names)
    for n in names:
        check_name(n, "pool name")


def test_discovered_documents_validate_and_parse_back():
    for doc in (source_document("gluster", "v", "h", dir="/", volume="v"),
                source_document("netfs", "e", "h", dir="/e", fmt="nfs")):
        corpus.assert_valid("storagepool.rng", doc)
        parsed = parse_pool(doc.encode())
        assert parsed.source.hosts[0].name == "h"
