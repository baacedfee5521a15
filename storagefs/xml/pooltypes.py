"""What each libvirt pool type has: source elements, formats, volume formats.

Transcribed from libvirt's ``poolTypeInfo`` table (src/conf/storage_conf.c).
The order of every format tuple is libvirt's enum order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DISK_VOLUME_FORMATS",
    "FILE_VOLUME_FORMATS",
    "POOL_TYPES",
    "POOL_TYPE_INFO",
    "SOURCE_ADAPTER",
    "SOURCE_DEVICE",
    "SOURCE_DIR",
    "SOURCE_HOST",
    "SOURCE_INITIATOR_IQN",
    "SOURCE_NAME",
    "SOURCE_NETWORK",
    "PoolTypeInfo",
    "default_volume_type",
    "pool_type_info",
]

# Which parts of <source> a pool type uses (libvirt's VIR_STORAGE_POOL_SOURCE_*).
SOURCE_HOST = 1 << 0
SOURCE_DEVICE = 1 << 1
SOURCE_DIR = 1 << 2
SOURCE_ADAPTER = 1 << 3
SOURCE_NAME = 1 << 4
SOURCE_INITIATOR_IQN = 1 << 5
SOURCE_NETWORK = 1 << 6  # no local target: the pool has no <target>

POOL_TYPES = (
    "dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct",
    "scsi", "mpath", "rbd", "sheepdog", "gluster", "zfs", "vstorage",
)  # fmt: skip

#: virStorageFileFormat; "none" can be printed but is refused on input.
FILE_VOLUME_FORMATS = (
    "none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi",
    "fat", "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk",
)  # fmt: skip

#: virStorageVolFormatDisk: partition types of a disk pool ("none" is accepted).
DISK_VOLUME_FORMATS = (
    "none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid", "extended",
)  # fmt: skip

_FS_FORMATS = (
    "auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2",
    "vfat", "hfs+", "xfs", "ocfs2", "vmfs",
    # storagefs accepts btrfs too (libvirt's list lacks it; its fs backend mounts it fine)
    "btrfs",
)  # fmt: skip
_NETFS_FORMATS = ("auto", "nfs", "glusterfs", "cifs")
_DISK_FORMATS = ("unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2")
_LOGICAL_FORMATS = ("unknown", "lvm2")


@dataclass(frozen=True)
class PoolTypeInfo:
    """One row of libvirt's poolTypeInfo table."""

    flags: int = 0
    source_formats: tuple[str, ...] = ()
    default_source_format: str | None = None
    #: formats accepted in a volume's <target><format type=...>; empty: none printed
    volume_formats: tuple[str, ...] = ()
    default_volume_format: str | None = None
    #: volume type a volume of this pool gets when its XML names none
    default_volume_type: str = "file"

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


_FILE_VOLUMES = {"volume_formats": FILE_VOLUME_FORMATS[1:], "default_volume_format": "raw"}

POOL_TYPE_INFO: dict[str, PoolTypeInfo] = {
    "dir": PoolTypeInfo(**_FILE_VOLUMES),
    "fs": PoolTypeInfo(SOURCE_DEVICE, _FS_FORMATS, "auto", **_FILE_VOLUMES),
    "netfs": PoolTypeInfo(SOURCE_HOST | SOURCE_DIR, _NETFS_FORMATS, "auto", **_FILE_VOLUMES),
    "logical": PoolTypeInfo(
        SOURCE_NAME | SOURCE_DEVICE, _LOGICAL_FORMATS, "lvm2", default_volume_type="block"
    ),
    "disk": PoolTypeInfo(
        SOURCE_DEVICE,
        _DISK_FORMATS,
        "unknown",
        DISK_VOLUME_FORMATS,
        "none",
        default_volume_type="block",
    ),
    "iscsi": PoolTypeInfo(
        SOURCE_HOST | SOURCE_DEVICE | SOURCE_INITIATOR_IQN, default_volume_type="block"
    ),
    "iscsi-direct": PoolTypeInfo(
        SOURCE_HOST | SOURCE_DEVICE | SOURCE_NETWORK | SOURCE_INITIATOR_IQN,
        default_volume_type="network",
    ),
    "scsi": PoolTypeInfo(SOURCE_ADAPTER, default_volume_type="block"),
    "mpath": PoolTypeInfo(default_volume_type="block"),
    "rbd": PoolTypeInfo(
        SOURCE_HOST | SOURCE_NETWORK | SOURCE_NAME,
        volume_formats=FILE_VOLUME_FORMATS[1:],
        default_volume_format="raw",
        default_volume_type="network",
    ),
    "sheepdog": PoolTypeInfo(
        SOURCE_HOST | SOURCE_NETWORK | SOURCE_NAME, default_volume_type="network"
    ),
    "gluster": PoolTypeInfo(
        SOURCE_HOST | SOURCE_NETWORK | SOURCE_NAME | SOURCE_DIR,
        default_volume_type="network",
        **_FILE_VOLUMES,
    ),
    "zfs": PoolTypeInfo(SOURCE_NAME | SOURCE_DEVICE, default_volume_type="block"),
    "vstorage": PoolTypeInfo(SOURCE_NAME, **_FILE_VOLUMES),
}


def pool_type_info(pool_type: str) -> PoolTypeInfo:
    """The table row for *pool_type*; KeyError for an unknown type."""
    return POOL_TYPE_INFO[pool_type]


def default_volume_type(pool_type: str) -> str:
    """'file', 'block' or 'network': what a volume in such a pool is."""
    return POOL_TYPE_INFO[pool_type].default_volume_type
