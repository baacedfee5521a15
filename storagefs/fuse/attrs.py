"""Attributes of the tree's inodes, and what chmod, chown and touch change: modes and
owners kept for files that are documents (persisted with the object), for scratch files
and directories (in memory), and times of directories (in memory, for rsync -a)."""

from __future__ import annotations

import dataclasses
import os
import stat

import pyfuse3

from ..core.objects import now_ns
from ..errors import NotPermitted
from ..state import FileMeta
from .files import DocumentFile
from .inodes import Inode
from .node import Node, file_mode
from .objdir import ScratchDirNode, ScratchFile
from .secrets import SecretValue
from .tree import Tree

ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0


def entry_attributes(tree: Tree, inode: Inode) -> pyfuse3.EntryAttributes:
    """What stat shows of an inode, from the node alone (no storage call). A pool's or
    volume's directory keeps the attributes it got last while what they are made of has
    not changed (readdir of 100,000 volumes builds none anew); callers never modify the
    object they get."""
    node = inode.node
    if node.attrs_by_stamp:
        cached = inode.attrs
        changed, gen = node.mtime_ns(), tree.attrs_gen
        if cached is not None and cached[0] == changed and cached[1] == gen:
            return cached[2]
        attrs = _attributes(tree, inode)
        inode.attrs = (changed, gen, attrs)
        return attrs
    return _attributes(tree, inode)


def _attributes(tree: Tree, inode: Inode) -> pyfuse3.EntryAttributes:
    node = inode.node
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode.ino
    a.entry_timeout = ENTRY_TIMEOUT
    a.attr_timeout = ATTR_TIMEOUT
    if (tree.hidden_from_anyone(inode.path) or getattr(node, "streaming", False)
            or getattr(node, "live", False)):
        # a stream's size grows with every line (tail -f stats it); a live file (metrics)
        # is rendered at each open: its size is the one it has now, never a cached one
        a.entry_timeout = a.attr_timeout = 0
    a.st_blksize = 4096
    t = node.mtime_ns()
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
    meta = node.meta()
    if node.kind == "dir":
        a.st_mode = stat.S_IFDIR | (meta.mode & 0o7777 if meta is not None else 0o755)
        a.st_nlink = 2
        times = tree.dir_times.get(inode.path)
        if times is not None:
            a.st_atime_ns, a.st_mtime_ns = times
    elif node.kind == "link":
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len(os.fsencode(node.target()))  # type: ignore[attr-defined]
    else:
        a.st_mode = file_mode(node)
        a.st_nlink = 1
        a.st_size = node.size()  # type: ignore[attr-defined]
    if meta is not None and node.kind != "link":
        a.st_uid, a.st_gid = meta.uid, meta.gid
        a.st_atime_ns = meta.atime_ns or a.st_atime_ns
        a.st_mtime_ns = meta.mtime_ns or a.st_mtime_ns
        a.st_ctime_ns = meta.ctime_ns or a.st_ctime_ns
    a.st_blocks = (a.st_size + 511) // 512
    return a


def dir_setattr(tree: Tree, ino: Inode, attr, fields) -> pyfuse3.EntryAttributes:
    """rsync -a sets times (kept, in memory) and re-sets equal modes on directories;
    a real mode or owner change would be a lie, so it is refused."""
    cur = entry_attributes(tree, ino)
    if (fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(cur.st_mode)) \
            or (fields.update_uid and attr.st_uid != cur.st_uid) \
            or (fields.update_gid and attr.st_gid != cur.st_gid):
        raise NotPermitted(f"{ino.name}: the mode and owner of directories are fixed")
    if fields.update_atime or fields.update_mtime:
        old = tree.dir_times.get(ino.path, (cur.st_atime_ns, cur.st_mtime_ns))
        tree.attrs_gen += 1
        tree.dir_times[ino.path] = (
            attr.st_atime_ns if fields.update_atime else old[0],
            attr.st_mtime_ns if fields.update_mtime else old[1])
        cur = entry_attributes(tree, ino)
    return cur

def set_meta(tree: Tree, ino: Inode, node: Node, attr, fields) -> None:
    if not (fields.update_mode or fields.update_uid or fields.update_gid
            or fields.update_atime or fields.update_mtime):
        return
    current = node.meta()
    meta = dataclasses.replace(current) if current else FileMeta(mode=node.mode())  # type: ignore
    if fields.update_mode:
        meta.mode = stat.S_IMODE(attr.st_mode)
    if fields.update_uid:
        meta.uid = attr.st_uid
    if fields.update_gid:
        meta.gid = attr.st_gid
    if fields.update_atime:
        meta.atime_ns = attr.st_atime_ns
    if fields.update_mtime:
        meta.mtime_ns = attr.st_mtime_ns
    meta.ctime_ns = now_ns()
    if isinstance(node, ScratchFile):
        node.scratch.meta = meta
        node.scratch.times_set = node.scratch.times_set or fields.update_mtime
    elif isinstance(node, ScratchDirNode):
        node.sdir.meta = meta
    elif isinstance(node, DocumentFile):
        if fields.update_mode or fields.update_uid:
            check_document_meta(ino.name, meta)
        node.set_meta(meta)
    else:
        check_command_meta(ino.name, node, meta)
        tree.file_meta[ino.path] = meta
        tree.attrs_gen += 1


def check_document_meta(name: str, meta: FileMeta) -> None:
    """A definition (config.xml) is applied with root's rights when written: a mode or
    owner that lets anyone but root write it would let them redefine the object (a pool's
    target, a secret), so it is refused, EPERM; modes that only take bits away, or give
    read, round-trip as before (Puppet's and Ansible's mode/owner)."""
    mode = meta.mode & 0o7777
    if mode & 0o022 or (meta.uid != 0 and mode & 0o200):
        raise NotPermitted(f"{name}: a definition is written by root only; mode "
                           f"{mode:04o} owner {meta.uid} would let others change it")


def check_command_meta(name: str, node: Node, meta: FileMeta) -> None:
    """A command file (state, autostart, control, a secret's value) runs what is written
    to it: a mode or owner that lets anyone but root write it (group or other write, or
    owner write with a non-root owner) is refused, EPERM (the kernel checks modes, and
    with --allow-other other users reach the tree). A secret's value is not made readable
    to anyone but root either. What is accepted (taking bits away) holds until unmount."""
    mode = meta.mode & 0o7777
    if mode & 0o022 or (meta.uid != 0 and mode & 0o200):
        raise NotPermitted(f"{name}: a command file is written by root only; mode "
                           f"{mode:04o} owner {meta.uid} would let others write it")
    if isinstance(node, SecretValue) and (mode & 0o044 or (meta.uid != 0 and mode & 0o400)):
        raise NotPermitted(f"{name}: a secret's value is read by root only; mode "
                           f"{mode:04o} owner {meta.uid} would let others read it")
