"""Where the shared conformance corpus is, and what it holds.

The corpus (libvirt's test data and RELAX NG schemas, virsh captures) lives
outside the repository, in ``../shared/conformance`` next to the checkout, or
in ``$STORAGEFS_SHARED/conformance``; it is never copied in.  When it is
missing, every test that needs it FAILS with a message saying so: a silently
skipped conformance suite would look green while proving nothing.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

#: parameter used in place of the corpus' files when the corpus is missing
MISSING = "corpus-missing"


def shared_dir() -> Path:
    override = os.environ.get("STORAGEFS_SHARED")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared"


def conformance_dir() -> Path:
    return shared_dir() / "conformance"


def libvirt_dir() -> Path:
    return conformance_dir() / "libvirt"


def virsh_dir() -> Path:
    return conformance_dir() / "virsh-9.0"


def available() -> bool:
    return (libvirt_dir() / "MANIFEST.tsv").is_file()


def require() -> Path:
    """The libvirt corpus directory; fails the calling test when it is missing."""
    if not available():
        pytest.fail(
            f"conformance corpus not found at {conformance_dir()} "
            "(set STORAGEFS_SHARED to the directory holding conformance/)",
            pytrace=False,
        )
    return libvirt_dir()


def names(folder: str, pattern: str = "*.xml") -> list[str]:
    """File names in a corpus folder, or [MISSING] (so the test runs and fails)."""
    if not available():
        return [MISSING]
    return sorted(p.name for p in (libvirt_dir() / folder).glob(pattern))


def read(relative: str) -> bytes:
    return (require() / relative).read_bytes()


@cache
def manifest() -> dict[str, dict[str, str]]:
    with open(require() / "MANIFEST.tsv", newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh, delimiter="\t")}


@dataclass(frozen=True)
class VolumeCase:
    """A volume input and how libvirt's tests parse it."""

    name: str
    pool: str  # corpus path of the pool XML giving the context
    no_capacity: bool
    opt_capacity: bool
    expected: str | None  # corpus path of the expected output, if any


def volume_case(name: str) -> VolumeCase:
    require()
    path = f"tests/storagevolxml2xmlin/{name}"
    notes = manifest()[path]["notes"]
    match = re.search(r"in context of pool (\S+\.xml)", notes)
    assert match, f"MANIFEST.tsv names no pool context for {path}"
    out = f"tests/storagevolxml2xmlout/{name}"
    return VolumeCase(
        name=name,
        pool=match.group(1),
        no_capacity="VIR_VOL_XML_PARSE_NO_CAPACITY" in notes,
        opt_capacity="VIR_VOL_XML_PARSE_OPT_CAPACITY" in notes,
        expected=out if (libvirt_dir() / out).is_file() else None,
    )


@cache
def schema(name: str) -> etree.RelaxNG:
    """A RELAX NG schema from the corpus, loaded by path so includes resolve."""
    path = require() / "src" / "conf" / "schemas" / name
    return etree.RelaxNG(etree.parse(str(path)))


def assert_valid(schema_name: str, document: str | bytes) -> None:
    data = document.encode() if isinstance(document, str) else document
    rng = schema(schema_name)
    if not rng.validate(etree.fromstring(data)):
        pytest.fail(f"not valid against {schema_name}: {rng.error_log}\n{data.decode()}")


def mutated(paths: list[str]):
    """Hypothesis strategy: corpus documents with a few bytes overwritten by junk
    (plain random bytes when the corpus is not there)."""
    from hypothesis import strategies as st

    if not available():
        return st.binary(max_size=200)
    docs = [read(p) for p in paths]

    def mutate(args):
        doc, cuts, junk = args
        for pos in cuts:
            pos %= len(doc) + 1
            doc = doc[:pos] + junk + doc[pos + 1 :]
        return doc

    return st.tuples(
        st.sampled_from(docs), st.lists(st.integers(min_value=0), max_size=3), st.binary(max_size=4)
    ).map(mutate)
