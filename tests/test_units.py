import pytest
from hypothesis import given
from hypothesis import strategies as st

from storagefs.units import LLONG_MAX, UNITS, parse_size, scale_integer


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("0", None, 0),
        ("1048576", None, 1048576),
        ("  42\n", None, 42),
        ("20G", None, 20 * 1024**3),
        ("512MiB", None, 512 * 1024**2),
        ("1k", None, 1024),
        ("1K", None, 1024),
        ("1kib", None, 1024),
        ("1KB", None, 1000),
        ("1kb", None, 1000),
        ("3MB", None, 3_000_000),
        ("2T", None, 2 * 1024**4),
        ("1P", None, 1024**5),
        ("7E", None, 7 * 1024**6),
        ("1EB", None, 10**18),
        ("5b", None, 5),
        ("5bytes", None, 5),
        ("5", "bytes", 5),
        ("10", "GB", 10 * 10**9),
        ("1", "TiB", 1024**4),
        ("1", "g", 1024**3),
        ("1", "", 1),
        ("010", None, 10),
        (str(LLONG_MAX), None, LLONG_MAX),
    ],
)
def test_parse_size(value, unit, expected):
    assert parse_size(value, unit) == expected


@pytest.mark.parametrize(
    ("value", "unit", "message"),
    [
        ("12Q", None, "Malformed size 12Q: unknown suffix 'Q'"),
        ("-1M", None, "Malformed size -1M: sizes must not be negative"),
        ("abc", None, "Malformed size abc: not a number"),
        ("1.5G", None, "Malformed size 1.5G: sizes must be whole numbers"),
        ("", None, "Malformed size '': no number given"),
        ("10G", "G", "Malformed size 10G G: unit given twice"),
        ("10", "KiBB", "Malformed size 10 KiBB: unknown suffix 'KiBB'"),
        ("1", "Z", "Malformed size 1 Z: unknown suffix 'Z'"),
        ("8E", None, "Malformed size 8E: value too large: 8E"),
        (str(LLONG_MAX + 1), None, f"Malformed size {LLONG_MAX + 1}: value too large"),
        ("9" * 5000, None, "value too large"),
        ("10 G", None, "unknown suffix ' G'"),
        ("+5", None, "not a number"),
    ],
)
def test_parse_size_errors(value, unit, message):
    with pytest.raises(ValueError) as info:
        parse_size(value, unit)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_scale_integer_matches_libvirt():
    assert scale_integer(3, None) == 3
    assert scale_integer(3, None, scale=1024) == 3 * 1024
    assert scale_integer(3, "m") == 3 * 1024**2
    with pytest.raises(ValueError, match="unknown suffix 'x'"):
        scale_integer(1, "x")
    with pytest.raises(ValueError, match="value too large: 2M"):
        scale_integer(2, "M", limit=1024**2)


def _case_variants(unit: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(unit), max_size=len(unit)).map(
        lambda flips: "".join(
            c.upper() if f else c.lower() for c, f in zip(unit, flips, strict=True)
        )
    )


@given(
    st.integers(min_value=0, max_value=LLONG_MAX),
    st.sampled_from(sorted(UNITS)).flatmap(lambda u: st.tuples(st.just(u), _case_variants(u))),
)
def test_round_trip_value_times_unit(n, units):
    canonical, spelled = units
    scale = UNITS[canonical]
    for args in ((str(n), spelled), (f"{n}{spelled}", None)):
        if n * scale <= LLONG_MAX:
            assert parse_size(*args) == n * scale
        else:
            with pytest.raises(ValueError, match="value too large"):
                parse_size(*args)


@given(st.text(), st.one_of(st.none(), st.text(max_size=8)))
def test_garbage_only_raises_value_error(value, unit):
    try:
        result = parse_size(value, unit)
    except ValueError as exc:
        assert str(exc).startswith("Malformed size ")
    else:
        assert 0 <= result <= LLONG_MAX
