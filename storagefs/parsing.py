"""Pure parsers for what users write to command files: one line becomes one typed
command, parsed once where the bytes arrive and carried as a value to the core.

Nothing here knows pools or state: a line that can never be valid is refused with
EINVAL (and a reason in virsh's words); whether a valid command fits the object's state
or its pool type is the core's question.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .errors import InvalidArgument
from .names import check_name
from .units import parse_size

MAX_COMMAND_BYTES = 4096
#: libvirt's wipe algorithms (virStorageVolWipeAlgorithm); which a pool type can do is
#: its backend's policy
WIPE_ALGORITHMS = ("zero", "nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7",
                   "pfitzner33", "random", "trim")
POOL_VERBS = ("start", "stop", "refresh", "build", "delete", "create")
VOLUME_VERBS = ("resize", "clone", "wipe", "snapshot", "revert", "delete-snapshot",
                "delete")
YES = {"yes", "y", "true", "on", "1"}
NO = {"no", "n", "false", "off", "0"}


# ---- the commands ------------------------------------------------------------------
@dataclass(frozen=True)
class PoolCommand:
    """start, stop, refresh, build [overwrite], delete."""

    verb: str
    overwrite: bool = False

    def __str__(self) -> str:
        return f"{self.verb} overwrite" if self.overwrite else self.verb


@dataclass(frozen=True)
class CreateVolume:
    """``create NAME CAPACITY [--format F] [--allocation A]`` (virsh vol-create-as)."""

    name: str
    capacity: int
    format: str | None = None
    allocation: int | None = None

    def __str__(self) -> str:
        return f"create {self.name} {self.capacity}"


@dataclass(frozen=True)
class Resize:
    size: int
    delta: bool = False
    allocate: bool = False
    shrink: bool = False

    def __str__(self) -> str:
        return "resize"


@dataclass(frozen=True)
class Clone:
    new: str
    format: str | None = None
    pool: str | None = None
    #: a copy-on-write clone of a snapshot (rbd: snap create + protect + rbd clone)
    linked: bool = False

    def __str__(self) -> str:
        return f"clone {self.new}"


@dataclass(frozen=True)
class Wipe:
    algorithm: str = "zero"

    def __str__(self) -> str:
        return f"wipe {self.algorithm}"


@dataclass(frozen=True)
class Snapshot:
    """snapshot NAME (op create), revert NAME, delete-snapshot NAME."""

    op: str
    name: str

    def __str__(self) -> str:
        verb = {"create": "snapshot", "revert": "revert", "delete": "delete-snapshot"}[self.op]
        return f"{verb} {self.name}"


@dataclass(frozen=True)
class DeleteVolume:
    """``delete [--purge-snapshots]``: rmdir, or with the volume's snapshots removed
    first (where the pool type can; protected snapshots still refuse)."""

    purge_snapshots: bool = False

    def __str__(self) -> str:
        return "delete --purge-snapshots" if self.purge_snapshots else "delete"


VolumeCommand = Resize | Clone | Wipe | Snapshot | DeleteVolume


# ---- lines -------------------------------------------------------------------------
def split_line(line: str | bytes) -> tuple[str, tuple[str, ...]] | None:
    """(verb, args) of one line; None for a blank line or a comment (ignored, as in a
    shell)."""
    if isinstance(line, bytes):
        if len(line) > MAX_COMMAND_BYTES:
            raise InvalidArgument(f"command longer than {MAX_COMMAND_BYTES} bytes")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("command is not valid UTF-8") from None
    if "\0" in line:
        raise InvalidArgument("command contains NUL")
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InvalidArgument(f"cannot parse command {line.strip()!r}: {exc}") from None
    if not words:
        return None
    return words[0].lower(), tuple(words[1:])


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _options(args: tuple[str, ...], known: tuple[str, ...], usage: str
             ) -> tuple[list[str], dict[str, str]]:
    rest, opts, words = list(args), {}, []
    while rest:
        a = rest.pop(0)
        if a in known:
            if not rest:
                raise InvalidArgument(f"{a} needs a value; usage: {usage}")
            if a in opts:
                raise InvalidArgument(f"{a} given twice; usage: {usage}")
            opts[a] = rest.pop(0)
        elif a.startswith("--"):
            raise InvalidArgument(f"unknown option {a}; usage: {usage}")
        else:
            words.append(a)
    return words, opts


def parse_pool_command(line: str | bytes, valid_now: list[str] | None = None
                       ) -> PoolCommand | CreateVolume | None:
    """A pool command line, or EINVAL for one that can never be valid."""
    split = split_line(line)
    if split is None:
        return None
    verb, args = split
    if verb not in POOL_VERBS:
        hint = f"valid now: {', '.join(valid_now) or 'none'}" if valid_now is not None else \
            "commands: start, stop, refresh, build [overwrite], delete, create NAME CAPACITY"
        raise InvalidArgument(f"unknown command '{' '.join((verb, *args))}'; {hint}")
    if verb == "create":
        return parse_create(args)
    if verb == "build":
        if args not in ((), ("overwrite",), ("--overwrite",)):
            raise InvalidArgument(f"build takes only 'overwrite', not '{' '.join(args)}'")
        return PoolCommand("build", overwrite=bool(args))
    if args:
        raise InvalidArgument(f"{verb} takes no arguments")
    return PoolCommand(verb)


CREATE_USAGE = "create NAME CAPACITY [--format F] [--allocation A]"
#: what a host adds to a fully allocated volume (file system blocks, image metadata such
#: as qcow2's L2 and refcount tables): ``virsh vol-dumpxml`` reports <allocation> that
#: much above <capacity>, and such a document must still be accepted
ALLOCATION_SLACK = 1 << 20


def check_allocation(capacity: int, allocation: int | None) -> None:
    """EINVAL for an <allocation> above <capacity>, except what vol-dumpxml reports for
    a fully allocated volume (a document read back from status.xml must be accepted):
    a whole number of 512-byte blocks (st_blocks, qemu's rounding) at most 1 MiB plus
    1/256 of the capacity (an image format's metadata) above it."""
    if allocation is None or allocation <= capacity:
        return
    if allocation > capacity + ALLOCATION_SLACK + capacity // 256:
        raise InvalidArgument(f"allocation {allocation} is above the capacity {capacity}")
    if allocation % 512:
        raise InvalidArgument(
            f"allocation {allocation} is above the capacity {capacity} and not a multiple "
            "of 512 (only a fully allocated volume's rounding to 512-byte blocks and "
            "image metadata may exceed it)")


def parse_create(args: tuple[str, ...]) -> CreateVolume:
    """The arguments of a create line, all checked (EINVAL with the reason otherwise).
    Options may come anywhere and as ``--opt=value``; each at most once."""
    words, opts = [], {}
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            words.append(word)
            continue
        key, eq, value = word.partition("=")
        if key not in ("--format", "--allocation"):
            raise InvalidArgument(f"unknown option {key!r}; usage: {CREATE_USAGE}")
        if not eq:
            if not rest:
                raise InvalidArgument(f"{key} needs a value; usage: {CREATE_USAGE}")
            value = rest.pop(0)
        if key in opts:
            raise InvalidArgument(f"{key} given twice")
        opts[key] = value
    if len(words) != 2:
        raise InvalidArgument(f"usage: {CREATE_USAGE}")
    name = check_name(words[0], "volume name")
    capacity = _size(words[1])
    allocation = _size(opts["--allocation"]) if "--allocation" in opts else None
    fmt = opts.get("--format")
    if fmt is not None and (not fmt or not fmt.isprintable() or len(fmt) > 64):
        raise InvalidArgument(f"bad format {fmt!r}")
    check_allocation(capacity, allocation)
    return CreateVolume(name, capacity, fmt, allocation)


CLONE_USAGE = "clone NEWNAME [--format FMT] [--pool POOL] [--linked]"


def parse_volume_command(line: str | bytes, valid: list[str] | None = None
                         ) -> VolumeCommand | None:
    """A volume command line, or EINVAL for one that can never be valid."""
    split = split_line(line)
    if split is None:
        return None
    verb, args = split
    if verb not in VOLUME_VERBS:
        hint = "; ".join(valid) if valid else ", ".join(VOLUME_VERBS)
        raise InvalidArgument(f"unknown command '{' '.join((verb, *args))}'; valid: {hint}")
    if verb == "resize":
        flags = {a for a in args if a.startswith("--")}
        sizes = [a for a in args if not a.startswith("--")]
        if flags - {"--shrink", "--delta", "--allocate"} or len(sizes) != 1:
            raise InvalidArgument("usage: resize [--delta] [--allocate] [--shrink] SIZE")
        return Resize(_size(sizes[0]), "--delta" in flags, "--allocate" in flags,
                      "--shrink" in flags)
    if verb == "clone":
        linked = "--linked" in args
        rest = tuple(a for a in args if a != "--linked")
        words, opts = _options(rest, ("--format", "--pool"), CLONE_USAGE)
        if len(words) != 1 or args.count("--linked") > 1:
            raise InvalidArgument(f"usage: {CLONE_USAGE}")
        return Clone(check_name(words[0], "volume name"), opts.get("--format"),
                     opts.get("--pool"), linked)
    if verb == "delete":
        if set(args) - {"--purge-snapshots"} or len(args) > 1:
            raise InvalidArgument("usage: delete [--purge-snapshots]")
        return DeleteVolume(bool(args))
    if verb == "wipe":
        if len(args) > 1:
            raise InvalidArgument(f"usage: wipe [{'|'.join(WIPE_ALGORITHMS)}]")
        if args and args[0] not in WIPE_ALGORITHMS:
            raise InvalidArgument(f"unknown wipe algorithm '{args[0]}'; known: "
                                  f"{', '.join(WIPE_ALGORITHMS)}")
        return Wipe(args[0] if args else "zero")
    if len(args) != 1:
        raise InvalidArgument(f"usage: {verb} NAME")
    op = {"snapshot": "create", "revert": "revert", "delete-snapshot": "delete"}[verb]
    return Snapshot(op, check_snapshot_name(args[0]))


def check_snapshot_name(name: str) -> str:
    check_name(name, "snapshot name")
    if name.isdigit():
        raise InvalidArgument("a snapshot name cannot be all digits (qemu-img takes it for an id)")
    return name


def _word(text: str | bytes) -> str:
    return (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).strip()


def parse_state(text: str | bytes) -> str:
    """What the state file takes: 'running' or 'inactive'."""
    word = _word(text)
    if word not in ("running", "inactive"):
        raise InvalidArgument(f"write 'running' or 'inactive' to state, not {word[:80]!r}")
    return word


def parse_yes_no(text: str | bytes) -> bool:
    word = _word(text)
    if word.lower() in YES:
        return True
    if word.lower() in NO:
        return False
    raise InvalidArgument(f"expected yes or no, not {word!r}")
