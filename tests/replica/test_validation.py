"""Input validation: every field a client sends, before it reaches a query."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.chat import validation as v
from replica.errors import InvalidArgument

SQL_INJECTIONS = [
    "x' OR '1'='1",
    "alice'; DROP TABLE accounts; --",
    'a"b',
    "a;b",
    "a' --",
    "a/*b*/",
    "a\\b",
    "a%",
    "a`b",
    "a b",
    "a\x00b",
]


# -- usernames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("  BOB  ", "bob"),
        ("alice\n", "alice"),  # surrounding whitespace is stripped
        ("a", "a"),
        ("0", "0"),
        ("a.b-c_d", "a.b-c_d"),
        ("9lives", "9lives"),
        ("x" * 32, "x" * 32),
    ],
)
def test_valid_usernames_are_canonicalised(given: str, canonical: str) -> None:
    assert v.username(given) == canonical


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "x" * 33,
        "_alice",
        ".alice",
        "-alice",
        "ålice",
        "алиса",
        "al ice",
        "ali\nce",
        "a\tb",
        "a+b",
        "a@b",
        *SQL_INJECTIONS,
    ],
)
def test_invalid_usernames_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument, match="is not valid: use 1-32 characters"):
        v.username(name)


def test_username_error_names_the_field_and_shortens_long_values() -> None:
    with pytest.raises(InvalidArgument, match=r"^recipient 'a b' is not valid") as info:
        v.username("a b", "recipient")
    assert "recipient" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        v.username("!" * 200)
    assert "!" * 37 + "..." in str(info.value)
    assert "!" * 41 not in str(info.value)


# -- passwords and bodies ------------------------------------------------------------------


def test_passwords() -> None:
    assert v.password("p") == "p"
    assert v.password("ü" * 1024) == "ü" * 1024
    with pytest.raises(InvalidArgument, match="must not be empty"):
        v.password("")
    with pytest.raises(InvalidArgument, match="longer than 1024"):
        v.password("p" * 1025)


@pytest.mark.parametrize(
    "body",
    [
        "x",
        "x" * 4096,
        "é" * 2048,  # 2 bytes each: exactly 4096
        "€" * 1365 + "x",  # 3 bytes each: 4096
        "😀" * 1024,  # 4 bytes each: 4096
        "'; DROP TABLE messages; --",  # bodies are data, stored verbatim
        "line\nbreak\ttab\x00nul",
    ],
    ids=["one", "4096-ascii", "4096-2byte", "4096-3byte", "4096-4byte", "sql", "control"],
)
def test_bodies_up_to_4096_utf8_bytes_are_accepted(body: str) -> None:
    assert v.body(body) == body


@pytest.mark.parametrize(
    ("body", "size"),
    [
        ("x" * 4097, 4097),
        ("é" * 2048 + "x", 4097),
        ("😀" * 1025, 4100),
        ("é" * 2049, 4098),  # only 2049 characters: the limit is bytes, not characters
    ],
)
def test_bodies_over_4096_utf8_bytes_are_rejected(body: str, size: int) -> None:
    with pytest.raises(
        InvalidArgument, match=f"^message is {size} bytes; the limit is 4096 bytes$"
    ):
        v.body(body)


def test_empty_body_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        v.body("")


# -- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id", ["a", "0f8fad5b-d9cb-469f-a165-70867728950e", "!" * 64, "~{}[]'\";%_"]
)
def test_valid_request_ids(request_id: str) -> None:
    assert v.request_id(request_id) == request_id


@pytest.mark.parametrize(
    "request_id", ["", "x" * 65, "has space", "tab\t", "new\nline", "é", "\x7f", "a\x00"]
)
def test_invalid_request_ids(request_id: str) -> None:
    with pytest.raises(InvalidArgument, match="request_id must be 1-64 printable ASCII"):
        v.request_id(request_id)


# -- list patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("", "%"),  # empty means "*"
        ("*", "%"),
        ("?", "_"),
        ("al*", "al%"),
        ("a?c", "a_c"),
        ("ALICE", "alice"),
        # '_' is a literal in a username, so it is escaped for LIKE.
        ("a_b", "a\\_b"),
        ("*_*", "%\\_%"),
        ("a.b-c", "a.b-c"),
        ("?*?", "_%_"),
    ],
)
def test_like_pattern_translation(pattern: str, like: str) -> None:
    assert v.like_pattern(pattern) == like


@pytest.mark.parametrize(
    "pattern",
    ["%", "a%", "[a-z]*", "a|b", "(a)", "^a$", "a+", "a{2}", "é*", *SQL_INJECTIONS],
)
def test_like_pattern_rejects_other_characters(pattern: str) -> None:
    # LIKE's own '%' and the escape character cannot be smuggled in; neither can regex syntax.
    with pytest.raises(InvalidArgument, match="usernames only use a-z, 0-9"):
        v.like_pattern(pattern)


def test_like_pattern_length_limit() -> None:
    assert v.like_pattern("*" * 64) == "%" * 64
    with pytest.raises(InvalidArgument, match="longer than 64 characters"):
        v.like_pattern("a" * 65)


def test_like_pattern_error_lists_the_bad_characters() -> None:
    with pytest.raises(InvalidArgument) as info:
        v.like_pattern("a;b'c")
    assert re.search(r"contains \"';\"", str(info.value)), str(info.value)


# -- page tokens and sizes -----------------------------------------------------------------


def test_username_page_tokens() -> None:
    assert v.username_page_token("") == ""
    assert v.username_page_token("alice") == "alice"
    for bad in ("Alice", "a b", "x" * 33, "' OR 1=1", "_a"):
        with pytest.raises(InvalidArgument, match="page_token is not one this server returned"):
            v.username_page_token(bad)


def test_message_page_tokens() -> None:
    assert v.message_page_token("") == 0
    assert v.message_page_token("42") == 42
    assert v.message_page_token(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", "1.5", "abc", "0x10", " 1", "9" * 20, "1; DROP"):
        with pytest.raises(InvalidArgument, match="page_token is not one this server returned"):
            v.message_page_token(bad)


def test_message_page_token_rejects_unicode_digits() -> None:
    with pytest.raises(InvalidArgument):
        v.message_page_token("²")


@pytest.mark.parametrize("token", [str(2**63), "9" * 19])
def test_message_page_token_above_bigint_is_rejected(token: str) -> None:
    with pytest.raises(InvalidArgument):
        v.message_page_token(token)


def test_page_sizes() -> None:
    assert v.page_size(0) == v.DEFAULT_PAGE_SIZE == 100
    assert v.page_size(1) == 1
    assert v.page_size(1000) == 1000
    with pytest.raises(InvalidArgument, match="above the limit of 1000"):
        v.page_size(1001)


def test_negative_page_size_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        v.page_size(-1)


# -- ack ids -------------------------------------------------------------------------------


def test_message_ids() -> None:
    assert v.message_ids([3, 1, 3, 2]) == [1, 2, 3]  # sorted, without repeats
    assert v.message_ids([2**63 - 1]) == [2**63 - 1]
    assert v.message_ids(list(range(1, 1001))) == list(range(1, 1001))
    with pytest.raises(InvalidArgument, match="must not be empty"):
        v.message_ids([])
    with pytest.raises(InvalidArgument, match="at most 1000"):
        v.message_ids(list(range(1, 1002)))
    for bad in ([0], [-1], [2**63], [1, 0]):
        with pytest.raises(InvalidArgument, match="positive integers"):
            v.message_ids(bad)


@pytest.mark.parametrize("name", ["\u212aate", "caf\u00e9", "\u0430lice"])
def test_non_ascii_names_are_rejected_not_folded(name: str) -> None:
    """KELVIN SIGN lower-cases to 'k' and Cyrillic a (U+0430) looks like 'a': both must be refused
    rather than turned into, or mistaken for, an ASCII name."""
    with pytest.raises(InvalidArgument):
        v.username(name)


# -- error messages ------------------------------------------------------------------------

# Characters whose repr() takes 10 characters each: before, a 64-character pattern of them
# made a 1130-character status message.
ESCAPED = st.characters(min_codepoint=0xA0000, max_codepoint=0xAFFFF)


@given(st.one_of(st.text(max_size=200), st.text(ESCAPED, max_size=200)))
def test_an_error_message_quotes_at_most_a_short_excerpt_of_the_input(text: str) -> None:
    for check in (v.like_pattern, v.username, v.username_page_token):
        try:
            check(text)
        except InvalidArgument as exc:
            assert len(str(exc)) <= 200, str(exc)


def test_a_long_input_is_shown_cut_short_inside_its_quotes() -> None:
    with pytest.raises(InvalidArgument) as info:
        v.like_pattern("\U000a7b70" * 64)
    assert str(info.value).startswith("pattern '\\U000a7b70\\U000a7b70\\U000a7b70...' contains ")
    with pytest.raises(InvalidArgument, match=r"^username 'a{37}\.\.\.' is not valid"):
        v.username("a" * 50)
