"""What readdir sends: entry by entry, and again from memory while nothing changed.

``ls -l`` of a pool of 100,000 volumes sends each volume's name, inode and attributes;
making them anew each time costs more than the kernel's part. A directory whose node
gives a ``listing_key`` (volumes/: the pool, its volume table's gen, its volumes'
touches) keeps what it sent in a :class:`Listing`, good while that key, the tree's
attrs_gen (modes, times, hidden names) and the inode table's gen (no inode dropped, made
stale or moved) hold, for the same list of names.
"""

from __future__ import annotations

from collections.abc import Callable

import pyfuse3

from .inodes import Inode

Entry = tuple[bytes, Inode, pyfuse3.EntryAttributes]


class Listing:
    """What readdir sent of a directory, entry by entry: (name bytes, inode, attributes),
    None for a name gone since opendir. Good while ``key`` holds: the directory's own
    key (its objects unchanged, Dir.listing_key), the tree's attrs_gen, the table's gen
    (no inode dropped or made stale) and the same list of names."""

    __slots__ = ("key", "names", "entries")

    def __init__(self, key: tuple, names: list[str]) -> None:
        self.key = key
        self.names = names
        self.entries: list[tuple[bytes, Inode, pyfuse3.EntryAttributes] | None] = []


def listing_of(parent: Inode, names: list[str], gens: tuple) -> Listing | None:
    """The entries sent of ``parent`` last time when nothing they are made of changed
    since, else a fresh empty one; None for a directory that keeps none."""
    key = parent.node.listing_key()  # type: ignore[union-attr]
    if key is None:
        return None
    key = (*key, *gens)
    listing = parent.listing
    if listing is None or listing.names is not names or listing.key != key:
        listing = parent.listing = Listing(key, names)
    return listing


def send(token, start_id: int, names: list[str], listing: Listing | None,
         entry_for: Callable[[str], Entry | None]) -> None:
    """readdir_reply each entry from ``start_id`` until the kernel's buffer is full;
    each entry sent counts one lookup of its inode."""
    reply = pyfuse3.readdir_reply
    kept = listing.entries if listing is not None else None
    for i in range(start_id, len(names)):
        if kept is not None and i < len(kept):
            entry = kept[i]
            if entry is None:
                continue  # gone when the listing was made
        else:
            entry = entry_for(names[i])
            if kept is not None and i == len(kept):
                kept.append(entry)
            if entry is None:
                continue  # gone since opendir
        if not reply(token, entry[0], entry[2], i + 1):
            return
        entry[1].lookups += 1
