"""MNT/metrics.prom (and the MNT/metrics link) on a real mount: parsed with
prometheus_client's exposition parser, scraped through the real consumer
(prometheus-node-exporter's textfile collector on 127.0.0.1), figures equal to the
tree's files, refusals and host tool times counted, and served from the cache (no
host tool run by a read; it answers while a pool's storage hangs)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time

import pytest
from conftest import _finish
from events_reader import EventReader
from hypothesis import given
from hypothesis import strategies as st
from mount_helpers import TEST_DEADLINE, Mount, command, define_pool, read, write_errno
from prometheus_client.parser import text_string_to_metric_families
from server_node_exporter import node_exporter  # noqa: F401
from test_hung_storage import bindfs, within  # noqa: F401

from storagefs.metrics import Exposition


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, by (name, labels); the parser raises on anything malformed."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_figures_are_the_trees_and_the_text_parses(mounted):
    m = mounted
    os.mkdir(m.vol("a.qcow2"))
    command(m.vol("a.qcow2") / "control", "resize 3G")
    os.mkdir(m.vol("b.raw"))
    assert os.readlink(m.mnt / "metrics") == "metrics.prom"
    text = read(m.mnt / "metrics")  # the link
    assert text.endswith("\n")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in (("storagefs_pool_capacity_bytes", "gauge"),
                       ("storagefs_volume_allocation_bytes", "gauge"),
                       ("storagefs_events", "counter"),  # parser drops _total
                       ("storagefs_tool_duration_seconds", "histogram")):
        assert fams[name].type == kind, name
    pool = m.pool("default")
    for what in ("capacity", "allocation", "available"):
        assert value(text, f"storagefs_pool_{what}_bytes", pool="default") == \
            int(read(pool / what)), what
    assert value(text, "storagefs_pool_state", pool="default", state="running") == 1
    assert value(text, "storagefs_pools", state="running") == 1
    for vol in ("a.qcow2", "b.raw"):
        for what in ("capacity", "allocation"):
            assert value(text, f"storagefs_volume_{what}_bytes", pool="default",
                         volume=vol) == int(read(m.vol(vol) / what)), (vol, what)
    assert value(text, "storagefs_volume_capacity_bytes", pool="default",
                 volume="a.qcow2") == 3 << 30
    assert value(text, "storagefs_events_total", object="volume", event="created") == 2
    assert value(text, "storagefs_events_total", object="volume", event="resized") == 1
    age = time.time() - value(text, "storagefs_pool_last_refresh_timestamp_seconds",
                              pool="default")
    assert -1 <= age < 60
    # qemu-img made and resized the qcow2: its runs are in the histogram
    n = value(text, "storagefs_tool_duration_seconds_count", tool="qemu-img")
    assert n >= 2
    assert value(text, "storagefs_tool_duration_seconds_bucket", tool="qemu-img",
                 le="+Inf") == n
    assert "# HELP storagefs_pool_capacity_bytes " in text


def test_fstat_of_an_open_exposition_tells_the_size_its_reads_get(mounted):
    """grep opens, fstats and reads; tar and rsync read st_size bytes. While volumes
    come and go the exposition changes between an open and the fstat that follows:
    the opener's fstat still tells the size of what its reads get (else grep says
    'binary file matches', tar archives it cut)."""
    import threading

    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            for k in range(30):
                (mounted.images / f"z{i}_{k}.img").write_bytes(b"")
            time.sleep(0.05)
            for k in range(30):
                (mounted.images / f"z{i}_{k}.img").unlink()
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    reads, wrong, sizes = 0, [], set()
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            fd = os.open(mounted.mnt / "metrics.prom", os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                data = b""
                while chunk := os.read(fd, 1 << 20):
                    data += chunk
            finally:
                os.close(fd)
            reads += 1
            sizes.add(size)
            if len(data) != size:
                wrong.append((size, len(data)))
    finally:
        stop.set()
        worker.join()
    assert len(sizes) > 2  # it did change meanwhile
    assert wrong == [], f"{len(wrong)} of {reads} reads disagreed with fstat: {wrong[:5]}"


def test_refusals_are_counted_by_kind(mounted):
    m = mounted
    before = samples(read(m.mnt / "metrics.prom"))
    assert not [k for k in before if k[0] == "storagefs_refusals_total"]
    code, _ = write_errno(m.pool("default") / "control", "nosuch\n")
    assert code == errno.EINVAL
    with pytest.raises(FileExistsError):
        os.mkdir(m.pool("default"))
    os.mkdir(m.vol("x.raw"))
    code, _ = write_errno(m.vol("x.raw") / "control", "resize 1M\n")  # a shrink
    assert code == errno.EINVAL
    refusals = {dict(k[1])["object"] + " " + dict(k[1])["errno"]: v
                for k, v in samples(read(m.mnt / "metrics.prom")).items()
                if k[0] == "storagefs_refusals_total"}
    assert refusals.get("pool EINVAL") == 1, refusals
    assert refusals.get("volume EINVAL") == 1, refusals


@pytest.mark.log_allows("storage became inaccessible", "returned after")
def test_a_read_runs_no_host_tool_and_waits_on_no_storage(mount_factory, bindfs):  # noqa: F811
    proc, src, dst = bindfs
    m = mount_factory(env=dict(os.environ, STORAGEFS_TOOL_TIMEOUT="4"))
    hp = m.pool("hp")
    os.mkdir(hp)
    (hp / "config.xml").write_text(
        f"<pool type='dir'><name>hp</name><target><path>{dst}</path></target></pool>\n")
    command(hp / "control", "start")
    os.mkdir(hp / "volumes" / "v.qcow2")
    def tool_runs(text: str) -> dict:
        # the device index runs lsblk, pvs and zpool when the host's devices change
        # (another program's loop device): not a read's doing
        return {k: v for k, v in samples(text).items()
                if k[0] == "storagefs_tool_duration_seconds_count"
                and dict(k[1])["tool"] not in ("lsblk", "pvs", "zpool", "blkid")}

    first = read(m.mnt / "metrics.prom")
    tools = tool_runs(first)
    for _ in range(50):
        text = read(m.mnt / "metrics.prom")
    assert tool_runs(text) == tools

    with EventReader(m.mnt) as events:
        events.opened()
        proc.send_signal(signal.SIGSTOP)
        try:
            answered, res = within(lambda: read(m.mnt / "metrics.prom"))
            assert answered and res[0] == "ok", "metrics.prom waited on hung storage"
            assert value(res[1], "storagefs_pool_capacity_bytes", pool="hp") == \
                value(first, "storagefs_pool_capacity_bytes", pool="hp")
            answered, _ = within(lambda: write_errno(hp / "control", "refresh\n"), 20)
            assert answered
            e = events.wait_for("pool", "hp", "inaccessible")
            assert "not responding" in e.detail
            # hung, not gone: its volumes stay listed with what storagefs last knew
            assert ("volume", "hp/v.qcow2", "vanished") not in [x.key for x in events.events()]
            answered, res = within(lambda: read(m.mnt / "metrics.prom"))
            assert answered and res[0] == "ok"
            assert value(res[1], "storagefs_pool_state", pool="hp", state="inaccessible") == 1
            assert value(res[1], "storagefs_pools", state="inaccessible") == 1
            assert value(res[1], "storagefs_volume_capacity_bytes", pool="hp",
                         volume="v.qcow2") == 1 << 30
        finally:
            proc.send_signal(signal.SIGCONT)
        command(hp / "state", "inactive")


@pytest.fixture
def exported(node_exporter, request):  # noqa: F811
    """storagefs mounted on the directory node_exporter's textfile collector reads."""
    m = Mount(node_exporter.base, name="mnt")
    shutil.rmtree(m.state_dir, ignore_errors=True)
    m.state_dir.mkdir()
    m.start()
    m.arm_watchdog(TEST_DEADLINE)
    yield m
    problems = _finish(m, request)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_node_exporter_scrapes_the_mount(node_exporter, exported):  # noqa: F811
    m = exported
    os.mkdir(m.vol("scraped.raw"))
    text = node_exporter.scrape()
    got = samples(text)  # the scrape parses as a whole
    assert value(text, "node_textfile_scrape_error") == 0, node_exporter.log()
    mtimes = [dict(k[1]).get("file") for k in got if k[0] == "node_textfile_mtime_seconds"]
    assert [os.path.basename(f) for f in mtimes] == ["metrics.prom"], mtimes
    assert value(text, "storagefs_pool_capacity_bytes", pool="default") == \
        int(read(m.pool("default") / "capacity"))
    assert value(text, "storagefs_volume_capacity_bytes", pool="default",
                 volume="scraped.raw") == 1 << 30
    assert ("storagefs_info", frozenset({("version", value_of(got, "storagefs_info"))})) in got
    assert "error" not in node_exporter.log().lower(), node_exporter.log()


def value_of(got, name: str) -> str:
    return next(dict(k[1])["version"] for k in got if k[0] == name)


label_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.lists(st.tuples(label_text, st.integers(0, 2**63)), min_size=1, max_size=5))
def test_any_label_value_round_trips_through_the_parser(rows):
    """Pool and volume names may hold quotes, backslashes, newlines: the exposition
    escapes them so that Prometheus's parser reads back the same names."""
    out = Exposition()
    out.family("storagefs_x_bytes", "gauge", "A test.",
               (({"pool": name, "n": str(i)}, v) for i, (name, v) in enumerate(rows)))
    parsed = [(s.labels["pool"], s.value) for f in text_string_to_metric_families(
        out.text().decode()) for s in f.samples]
    assert parsed == [(name, v) for name, v in rows]


@pytest.mark.log_allows("storage became inaccessible", "refused refresh", "cannot watch")
def test_a_failed_background_rescan_is_no_refusal(mounted, tmp_path):
    """storagefs's own rescan, after it saw the target go, fails: the pool is
    inaccessible and the failure is counted as a background failure, not as a refused
    operation (nobody asked for anything). A user's refresh of it is a refusal."""
    m = mounted
    target = tmp_path / "t"
    define_pool(m, "p", target)
    shutil.rmtree(target)
    deadline = time.monotonic() + TEST_DEADLINE
    while read(m.pool("p") / "state") != "inaccessible\n":
        assert time.monotonic() < deadline, "the pool never became inaccessible"
        time.sleep(0.1)
    text = read(m.mnt / "metrics.prom")
    kinds = {(k[0], dict(k[1])["object"], dict(k[1])["operation"]) for k in samples(text)
             if k[0] in ("storagefs_refusals_total", "storagefs_background_failures_total")}
    assert ("storagefs_background_failures_total", "pool", "refresh") in kinds, kinds
    assert ("storagefs_refusals_total", "pool", "refresh") not in kinds, kinds
    code, _ = write_errno(m.pool("p") / "control", "refresh\n")
    assert code != 0
    refusals = {dict(k[1])["operation"]: v for k, v in
                samples(read(m.mnt / "metrics.prom")).items()
                if k[0] == "storagefs_refusals_total" and dict(k[1])["object"] == "pool"}
    assert refusals == {"control": 1}, refusals  # the write refused: control
