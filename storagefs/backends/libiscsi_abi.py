"""The part of libiscsi's C interface (``libiscsi.so.7``, iscsi.h and scsi-lowlevel.h)
that :mod:`.libiscsi` uses: enum values, the heads of the structures it reads, and
typed prototypes. Only the head of ``struct scsi_task`` and the unmarshalled READ
CAPACITY(16) / INQUIRY / REPORT LUNS replies are read; their layout has not changed
since libiscsi 1.4.
"""

from __future__ import annotations

import ctypes
import functools

from ..errors import NotSupported

LIBRARY = "libiscsi.so.7"

# enum iscsi_session_type / iscsi_header_digest / scsi_status (iscsi.h)
SESSION_DISCOVERY, SESSION_NORMAL = 1, 2
HEADER_DIGEST_NONE_CRC32C = 1
STATUS_GOOD, STATUS_CHECK_CONDITION = 0, 2
#: libiscsi's own status of a task that got no answer in time (SCSI_STATUS_TIMEOUT)
STATUS_TIMEOUT = 0x0F000002
# enum scsi_sense_key (scsi-lowlevel.h)
SENSE_NOT_READY, SENSE_ILLEGAL_REQUEST, SENSE_UNIT_ATTENTION = 0x02, 0x05, 0x06
SENSE_DATA_PROTECTION = 0x07
ASCQ_LUN_NOT_SUPPORTED = 0x2500
#: peripheral device types whose LUN holds blocks (direct access, write once, CD/DVD,
#: optical memory, simplified direct access, zoned block): the volumes of a pool. A
#: storage array controller (tgtd's LUN 0) or an enclosure holds none.
BLOCK_DEVICE_TYPES = (0x00, 0x04, 0x05, 0x07, 0x0E, 0x14)
#: bytes the first REPORT LUNS asks for (header and 2 LUNs); asked again when longer
REPORT_LUNS_FIRST = 24


class Task(ctypes.Structure):
    """The head of ``struct scsi_task`` up to the sense key and ASCQ."""

    _fields_ = [("status", ctypes.c_int), ("cdb_size", ctypes.c_int),
                ("xfer_dir", ctypes.c_int), ("expxferlen", ctypes.c_int),
                ("cdb", ctypes.c_ubyte * 16), ("residual_status", ctypes.c_int),
                ("residual", ctypes.c_size_t), ("sense_error_type", ctypes.c_ubyte),
                ("sense_key", ctypes.c_int), ("sense_ascq", ctypes.c_int)]


class ReadCapacity16(ctypes.Structure):
    _fields_ = [("returned_lba", ctypes.c_uint64), ("block_length", ctypes.c_uint32)]


class InquiryHead(ctypes.Structure):
    _fields_ = [("qualifier", ctypes.c_int), ("device_type", ctypes.c_int)]


class Portal(ctypes.Structure):
    pass


Portal._fields_ = [("next", ctypes.POINTER(Portal)), ("portal", ctypes.c_char_p)]


class Discovered(ctypes.Structure):
    pass


Discovered._fields_ = [("next", ctypes.POINTER(Discovered)),
                        ("target_name", ctypes.c_char_p),
                        ("portals", ctypes.POINTER(Portal))]

TASK = ctypes.POINTER(Task)

PROTOTYPES: dict[str, tuple[object, list]] = {
    "iscsi_create_context": (ctypes.c_void_p, [ctypes.c_char_p]),
    "iscsi_destroy_context": (ctypes.c_int, [ctypes.c_void_p]),
    "iscsi_get_error": (ctypes.c_char_p, [ctypes.c_void_p]),
    "iscsi_set_log_level": (None, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_set_targetname": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "iscsi_set_session_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_set_header_digest": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_set_timeout": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_set_noautoreconnect": (None, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_set_initiator_username_pwd": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                                        ctypes.c_char_p]),
    "iscsi_set_target_username_pwd": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                                     ctypes.c_char_p]),
    "iscsi_connect_sync": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "iscsi_login_sync": (ctypes.c_int, [ctypes.c_void_p]),
    "iscsi_logout_sync": (ctypes.c_int, [ctypes.c_void_p]),
    "iscsi_disconnect": (ctypes.c_int, [ctypes.c_void_p]),
    "iscsi_discovery_sync": (ctypes.POINTER(Discovered), [ctypes.c_void_p]),
    "iscsi_free_discovery_data": (None, [ctypes.c_void_p, ctypes.POINTER(Discovered)]),
    "iscsi_reportluns_sync": (TASK, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
    "iscsi_testunitready_sync": (TASK, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_inquiry_sync": (TASK, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_int]),
    "iscsi_readcapacity16_sync": (TASK, [ctypes.c_void_p, ctypes.c_int]),
    "iscsi_write16_sync": (TASK, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                                   ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int]),
    "scsi_free_scsi_task": (None, [TASK]),
    "scsi_datain_unmarshall": (ctypes.c_void_p, [TASK]),
    "scsi_datain_getfullsize": (ctypes.c_int, [TASK]),
    "scsi_sense_key_str": (ctypes.c_char_p, [ctypes.c_int]),
}


@functools.cache
def library() -> ctypes.CDLL:
    """libiscsi with typed prototypes; ENOTSUP when it is not installed."""
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError:
        raise NotSupported(f"{LIBRARY} not found: install libiscsi7 for iscsi-direct "
                           "pools") from None
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
