"""SNI selection (tls.sni): a table of cases, then hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tls import sni

DEFAULT = "default"

# Values are labels naming the key they were stored under, so a result says which key won.
INDEX = {
    "example.org": "exact example.org",
    "a.example.org": "exact a.example.org",
    "*.example.org": "wildcard example.org",
    "*.example.net": "wildcard example.net",  # no entry for the bare parent on purpose
    "*.x": "literal *.x",
    "mail": "exact mail",
}


@pytest.mark.parametrize(("server_name", "expected"), [
    ("example.org", "exact example.org"),
    ("a.example.org", "exact a.example.org"),  # exact beats the wildcard that also covers it
    ("b.example.org", "wildcard example.org"),
    ("b.example.net", "wildcard example.net"),
    ("a.b.example.net", DEFAULT),  # a wildcard covers one label, not two
    ("a.b.example.org", DEFAULT),
    ("example.net", DEFAULT),  # nor the bare parent
    ("B.Example.NET", "wildcard example.net"),
    ("A.EXAMPLE.ORG", "exact a.example.org"),
    ("b.example.net.", "wildcard example.net"),
    ("a.example.org.", "exact a.example.org"),
    ("Example.ORG.", "exact example.org"),
    ("mail", "exact mail"),
    ("MAIL.", "exact mail"),
    ("other", DEFAULT),
    (None, DEFAULT),
    ("", DEFAULT),
    (".", DEFAULT),
    ("..", DEFAULT),
    (".example.net", DEFAULT),  # an empty first label is not a label the wildcard stands for
    ("*.x", "literal *.x"),  # a name that is itself a wildcard is looked up as written
    ("*.X.", "literal *.x"),
    ("*.example.net", "wildcard example.net"),
    ("*.b.example.net", DEFAULT),  # ... and only as written: not as "*.example.net"
    ("y.x", "literal *.x"),
    ("unknown.example.com", DEFAULT),
])
def test_select(server_name: str | None, expected: str) -> None:
    assert sni.select(INDEX, server_name, DEFAULT) == expected


@pytest.mark.parametrize(("server_name", "keys"), [
    ("a.example.org", ("a.example.org", "*.example.org")),
    ("A.Example.Org.", ("a.example.org", "*.example.org")),
    ("example.org", ("example.org", "*.org")),
    ("localhost", ("localhost",)),
    ("*.example.org", ("*.example.org",)),
    (".example.org", (".example.org",)),
    ("a.", ("a",)),
    (None, ()),
    ("", ()),
    ("...", ()),
])
def test_lookup_keys(server_name: str | None, keys: tuple[str, ...]) -> None:
    assert sni.lookup_keys(server_name) == keys


@pytest.mark.parametrize(("name", "normal"), [
    ("Example.ORG", "example.org"),
    ("example.org.", "example.org"),
    ("example.org..", "example.org"),
    ("*.Example.org", "*.example.org"),
    ("", None),
    (".", None),
    (None, None),
])
def test_normalize(name: str | None, normal: str | None) -> None:
    assert sni.normalize(name) == normal


def test_select_skips_none_values() -> None:
    # A mapping that answers None for a key counts as no entry, so the wildcard is still tried.
    index: dict[str, str | None] = {"a.example.org": None, "*.example.org": "wildcard"}
    assert sni.select(index, "a.example.org", DEFAULT) == "wildcard"


# Names built from a few labels, so that exact and wildcard hits are frequent; arbitrary text
# alone would almost never hit an index key.
LABELS = st.sampled_from(["a", "B", "*", "example", "ORG", "org", "x", "", "é", "İ"])
DNS_LIKE = st.builds(
    lambda labels, dot: ".".join(labels) + dot,
    st.lists(LABELS, min_size=1, max_size=4),
    st.sampled_from(["", ".", ".."]),
)
NAMES = st.one_of(st.none(), st.text(max_size=30), DNS_LIKE)


@given(NAMES)
def test_normalize_is_idempotent(name: str | None) -> None:
    once = sni.normalize(name)
    assert sni.normalize(once) == once


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=5), max_size=5),
       st.one_of(st.none(), st.text()))
def test_select_never_raises(index: dict[str, str], server_name: str | None) -> None:
    sni.select(index, server_name, DEFAULT)


@given(st.lists(st.one_of(DNS_LIKE, st.text(max_size=10)), max_size=8), NAMES)
def test_select_returns_only_the_exact_or_one_label_wildcard_entry(
        keys: list[str], server_name: str | None) -> None:
    index = {key: key for key in keys}
    default = object()
    found = sni.select(index, server_name, default)
    if found is default:
        return
    name = sni.normalize(server_name)
    assert name is not None
    assert found in (name, "*." + name.partition(".")[2])
    # An exact entry, when there is one, always wins.
    if name in index:
        assert found == name
