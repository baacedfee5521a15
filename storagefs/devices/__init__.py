"""The host's devices, named and described as libvirt's node devices.

:class:`DeviceIndex` scans sysfs once (``load``), then follows kernel uevents
(``run``); each :class:`Device` carries its libvirt name, parent, capability
classes, device node, one-value facts and its node-device XML.

Naming follows libvirt's udev backend: ``<subsystem>_<sysname>`` with every
character outside [A-Za-z0-9] written ``_``, plus the MAC address for net
devices and udev's ``ID_SERIAL`` for block devices (``block_vda`` without
udev's database, ``block_vda_SERIAL`` with it); ``computer`` is the root.
Unlike libvirt, loop, zram, partition and other block devices libvirt cannot
classify are listed too, as ``storage``.
"""

from .index import Device, DeviceIndex

__all__ = ["Device", "DeviceIndex"]
