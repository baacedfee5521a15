"""The contents of generated files: status.xml, one-value files, README."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.docs import pool_status, shown_format, volume_doc
from ..core.objects import INACCESSIBLE, Pool, Volume

if TYPE_CHECKING:
    from ..core.registry import Registry

README = b"""storagefs: the host's storage as files (libvirt's storage model)

  devices/NAME/         one per host device, named as libvirt names node devices:
                        computer, pci_0000_00_02_0, net_eth0_<mac>, block_vda[_SERIAL],
                        block_loop3, block_loop3p1, scsi_host0, usb_1_2 ... (unlike
                        libvirt: loop, zram and partitions too)
    device.xml          node-device XML (virsh nodedev-dumpxml)
    subsystem devnode driver vendor product serial size ...   one value per file
    parent -> ../PARENT
  devices/by-class/CLASS/NAME    CLASS is libvirt's capability: system pci net storage
                                 scsi_host scsi usb_device usb drm ...
  devices/by-devnode/NODE        lookup by /dev name (sda, loop3p1; '!' for '/')
  pools/NAME/           one storage pool
    config.xml          its definition (libvirt pool XML; write to define or change)
    status.xml          the live definition with uuid and sizes (virsh pool-dumpxml)
    state               inactive | building | running | degraded | inaccessible
                        write 'running' or 'inactive' to start or stop (idempotent)
    autostart           yes | no
    control             write a command: start, stop, build, build overwrite,
                        refresh, delete, create NAME CAPACITY [--format F]
                        [--allocation A]; read it for the commands valid now
    uuid type capacity allocation available   one value per file
    error               the last refused operation and why
    volumes/VOL/        one volume: config.xml status.xml path capacity allocation
                        format key control progress error snapshots/ (and url:
                        how a guest reaches a network volume, iscsi://HOST/IQN/LUN)
      control           resize [--delta|--allocate|--shrink] SIZE, clone NEW
                        [--format F] [--pool P], wipe [ALG], snapshot S, revert S,
                        delete-snapshot S
      progress          the long operation running now and how far ("clone 37%")
      snapshots/S/      qcow2 internal snapshots: mkdir creates, rmdir deletes
  pools/by-uuid/  pools/by-path/        links to pools
  volumes/by-key/ volumes/by-path/      links to volumes (paths escaped as
                                        systemd-escape --path does; a name over
                                        255 bytes ends in _ and 16 hex of its sha256)
  secrets/UUID/         config.xml (libvirt secret XML) and value (0600; write-only
                        for private='yes'); referenced by <encryption> and <auth>
  events                read it to follow what happens, one line per event, from the
                        moment it is opened: TIME KIND NAME EVENT [DETAIL]
                        (cat events; tail -f events; poll/select work)
  metrics.prom          Prometheus text exposition of pools, volumes, operations,
                        refusals and host tool times; metrics -> metrics.prom
  sources/TYPE/         storage that could become a pool of TYPE, as ready pool
                        documents NAME.xml (NAME: the pool name it proposes)
    query               write a device, a volume group or a host to ask about it;
                        its answer is the directory QUERY/ ('!' for '/')
    error               the last failed discovery and why

Define a pool:   mkdir pools/P; cat pool.xml > pools/P/config.xml
Start it:        echo running > pools/P/state
Make a volume:   mkdir pools/P/volumes/disk1.qcow2
Or in one line:  echo 'create disk2.qcow2 10G' > pools/P/control
Change it:       write a volume XML to pools/P/volumes/disk1.qcow2/config.xml
                 (until anything else writes to it, the XML re-makes it in full)
Destroy it:      rmdir pools/P/volumes/disk1.qcow2
Undefine:        echo inactive > pools/P/state; rmdir pools/P   (storage is kept)
Adopt storage:   mkdir pools/vg0; cp sources/logical/vg0.xml pools/vg0/config.xml

A refused write fails with an errno (EINVAL, EEXIST, EBUSY, ENOENT, ENOTSUP,
EIO ...) and the object's error file says why. Only rmdir destroys.
"""


def line(value: object) -> bytes:
    return f"{value}\n".encode()


def pool_file(reg: Registry, pool: Pool, name: str) -> bytes:
    """A pool's generated file, from what the core knows (figures are cached: nothing
    here touches the storage)."""
    if name == "config.xml":
        return pool.config
    if name == "error":
        return pool.error.encode()
    if not pool.defined:
        return line(INACCESSIBLE) if name == "state" and pool.broken else b""
    if name == "status.xml":
        return pool_status(pool.definition, pool.uuid, pool.info)
    if name == "state":
        return line(pool.state)
    if name == "autostart":
        return line("yes" if pool.autostart else "no")
    if name == "control":
        return "".join(f"{c}\n" for c in reg.life.valid_commands(pool)).encode()
    if name == "uuid":
        return line(pool.uuid)
    if name == "type":
        return line(pool.definition.type)
    return line(getattr(pool.info, name))


def volume_config_xml(vol: Volume) -> bytes:
    """The stored document if a user wrote one, else the volume as it was made."""
    if vol.config is not None:
        return vol.config
    if vol.pending:
        return b""
    return volume_doc(vol.pool.definition, vol.info, live=False)


def volume_file(reg: Registry, vol: Volume, name: str) -> bytes:
    if name == "config.xml":
        return volume_config_xml(vol)
    if name == "status.xml":
        return volume_doc(vol.pool.definition, vol.info, live=True, config=vol.config)
    if name == "error":
        return vol.error.encode()
    if name == "control":
        return "".join(f"{c}\n" for c in reg.vcmds.valid_commands(vol)).encode()
    if name == "progress":
        return vol.progress.encode()
    info = vol.info
    if name in ("capacity", "allocation"):
        return line(getattr(info, name))
    if name == "format":
        return line(shown_format(info))
    if name == "key":
        return line(info.key)
    if name == "url":
        return line(info.url or "")
    return b""


def snapshot_file(snap, name: str) -> bytes:
    value = {"id": snap.id, "date": snap.date, "vm-state-size": snap.vm_state_size,
             "vm-clock": snap.vm_clock}[name]
    return line(value)
