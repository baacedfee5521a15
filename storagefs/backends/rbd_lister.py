"""List every image of a Ceph pool with its size and snapshots without opening any:
a standalone script for Debian's /usr/bin/python3 (whose python3-rados the storagefs
venv may not see), run by the rbd backend as a host tool (time limit, killed with its
process group), printing what ``rbd ls -l --format json`` prints.

``rbd ls -l`` opens every image inside librbd (about 1.6 ms of CPU each); this reads
the pool's ``rbd_directory`` (names and ids) and then every ``rbd_header.ID`` object's
omap (``size``, ``snapshot_*``) in parallel with asynchronous RADOS reads. That is RBD's
format-2 layout, unchanged since its introduction (Ceph 0.55); format-1 images (not
made since Ceph 15) are not in it, and the caller falls back to ``rbd ls -l`` when
this script fails.

Input: one JSON object on stdin: pool, mon_host, user (null: auth none), keyring,
timeout. Output: JSON on stdout: ``images`` (the rows), ``df`` (as ``rados df``).
Uses nothing from storagefs (it runs under another Python).
"""

import json
import struct
import sys
import threading


def _u32(b, off):
    return struct.unpack_from("<I", b, off)[0]


def _u64(b, off):
    return struct.unpack_from("<Q", b, off)[0]


def decode_snapshot(value):
    """cls_rbd_snap: ENCODE_START header (u8 v, u8 compat, u32 len), then id (u64),
    name (u32 length + bytes), image_size (u64)."""
    off = 6
    snap_id = _u64(value, off)
    off += 8
    n = _u32(value, off)
    off += 4
    name = value[off:off + n].decode("utf-8", "replace")
    off += n
    size = _u64(value, off)
    return {"snapshot": name, "snapshot_id": snap_id, "size": size}


def decode_directory_id(value):
    """rbd_directory's name_NAME value: the id as an encoded string (u32 + bytes)."""
    n = _u32(value, 0)
    return value[4:4 + n].decode("ascii", "replace")


def main():
    import rados

    cfg = json.load(sys.stdin)
    conf = {"mon_host": cfg["mon_host"], "rados_osd_op_timeout": str(cfg["timeout"]),
            "rados_mon_op_timeout": str(cfg["timeout"]),
            "client_mount_timeout": str(cfg["timeout"]), "log_to_stderr": "false",
            "err_to_stderr": "false", "admin_socket": "", "log_file": ""}
    if cfg.get("user"):
        conf["keyring"] = cfg["keyring"]
    else:
        conf["auth_client_required"] = "none"
        conf["keyring"] = "/dev/null"
    cluster = rados.Rados(conffile="/dev/null", rados_id=cfg.get("user") or None,
                          conf=conf)
    try:
        cluster.connect(timeout=int(cfg["timeout"]))
    except rados.Error as exc:
        print(f"rbd: couldn't connect to the cluster: {exc}", file=sys.stderr)
        return getattr(exc, "errno", 5) or 5
    try:
        ioctx = cluster.open_ioctx(cfg["pool"])
    except rados.Error as exc:
        print(f"rbd: error opening pool '{cfg['pool']}': {exc}", file=sys.stderr)
        return getattr(exc, "errno", 2) or 2
    ids = {}
    after = ""
    while True:  # rbd_directory: name_NAME -> id, read in pages
        with rados.ReadOpCtx() as op:
            it, _ = ioctx.get_omap_vals(op, after, "name_", 1024)
            try:
                ioctx.operate_read_op(op, "rbd_directory")
            except rados.ObjectNotFound:
                break
            page = list(it)
        for key, value in page:
            ids[key[len("name_"):]] = decode_directory_id(value)
        if len(page) < 1024:
            break
        after = page[-1][0]

    results = {}
    done = threading.Semaphore(0)
    ops = []

    for name, image_id in ids.items():
        op = rados.ReadOpCtx()
        op.__enter__()
        it, _ = ioctx.get_omap_vals(op, "", "", 4096)

        def complete(_comp, name=name, it=it):
            try:
                results[name] = dict(it)
            except Exception:  # noqa: BLE001 - an image removed meanwhile
                results[name] = None
            done.release()

        ops.append((op, ioctx.operate_aio_read_op(op, f"rbd_header.{image_id}",
                                                  oncomplete=complete)))
    for _ in ops:
        done.acquire()
    rows = []
    for name in sorted(ids):
        omap = results.get(name)
        if not omap or "size" not in omap:
            continue  # being made or removed right now, or not a format-2 image
        row = {"image": name, "id": ids[name], "size": _u64(omap["size"], 0),
               "format": 2}
        if len(omap.get("features", b"")) >= 8:  # RBD_FEATURE_* bits (16: fast-diff)
            row["features"] = _u64(omap["features"], 0)
        rows.append(row)
        for key, value in sorted(omap.items()):
            if key.startswith("snapshot_"):
                try:
                    rows.append(dict(decode_snapshot(value), image=name, id=ids[name]))
                except struct.error:
                    pass
    for op, _comp in ops:
        op.__exit__(None, None, None)
    # the figures rados df prints: the cluster's space (KiB), the pool's bytes
    total = cluster.get_cluster_stats()
    pool = ioctx.get_stats()
    stats = {"total_space": total.get("kb", 0), "total_avail": total.get("kb_avail", 0),
             "pools": [{"name": cfg["pool"], "size_bytes": pool.get("num_bytes", 0)}]}
    ioctx.close()
    cluster.shutdown()
    json.dump({"images": rows, "df": stats}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
