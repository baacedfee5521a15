"""libvirt's storage XML formats, read safely and written byte for byte as libvirt does.

- :mod:`.safe`: hardened parsing of untrusted bytes (:class:`XmlError`,
  :func:`parse_document`, :class:`IncrementalDocument`);
- :mod:`.pool`: storage pool XML (:func:`parse_pool`, :func:`format_pool`);
- :mod:`.volume`: storage volume XML (:func:`parse_volume`, :func:`format_volume`);
- :mod:`.pooltypes`: what each pool type supports.
"""

from .common import Permissions, SecretRef
from .encryption import Encryption
from .pool import (
    FS_NS,
    RBD_NS,
    STORAGEFS_NS,
    Adapter,
    Auth,
    FreeExtent,
    PciAddress,
    PoolDef,
    PoolSource,
    SourceDevice,
    SourceHost,
    format_pool,
    parse_pool,
)
from .pooltypes import POOL_TYPE_INFO, POOL_TYPES, PoolTypeInfo, default_volume_type
from .safe import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_ELEMENTS,
    IncrementalDocument,
    XmlError,
    parse_document,
)
from .volume import (
    VOLUME_FEATURES,
    VOLUME_TYPES,
    BackingStore,
    Extent,
    Timestamps,
    VolTarget,
    VolumeDef,
    format_timestamp,
    format_volume,
    parse_volume,
)

__all__ = [
    "FS_NS",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_ELEMENTS",
    "POOL_TYPES",
    "POOL_TYPE_INFO",
    "RBD_NS",
    "STORAGEFS_NS",
    "VOLUME_FEATURES",
    "VOLUME_TYPES",
    "Adapter",
    "Auth",
    "BackingStore",
    "Encryption",
    "Extent",
    "FreeExtent",
    "IncrementalDocument",
    "PciAddress",
    "Permissions",
    "PoolDef",
    "PoolSource",
    "PoolTypeInfo",
    "SecretRef",
    "SourceDevice",
    "SourceHost",
    "Timestamps",
    "VolTarget",
    "VolumeDef",
    "XmlError",
    "default_volume_type",
    "format_pool",
    "format_timestamp",
    "format_volume",
    "parse_document",
    "parse_pool",
    "parse_volume",
]
