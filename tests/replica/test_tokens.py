"""Session tokens: only what token_for() made, under this secret, is accepted; anything else is
None, never an exception (a client controls every character of the token)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.chat.tokens import SessionTokens

tokens = SessionTokens(b"a-test-secret-of-enough-bytes")
EMOJI = "\U0001f600"


def test_a_token_names_its_session() -> None:
    session_id = tokens.new_session_id()
    assert tokens.session_id_of(tokens.token_for(session_id)) == session_id


def altered(token: str) -> list[str]:
    session_id, _, mac = token.partition(".")
    return [
        "",
        ".",
        session_id,
        f"{session_id}.",
        f"{session_id}.{mac.upper()}",
        f"{session_id.upper()}.{mac}",
        f"{session_id}.{mac}\x00",
        f"{session_id}.{mac}.{mac}",
        f"{session_id}.{'é' * 64}",  # non-ASCII: hmac.compare_digest raised TypeError
        f"{'é' * 32}.{mac}",  # non-ASCII id: was MAC'd as '?' * 32
        f"{'?' * 32}.{mac}",
        f"{session_id}.{EMOJI * 64}",
        f"{session_id}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        token * 100,
    ]


@pytest.mark.parametrize("index", range(len(altered(tokens.token_for("0" * 32)))))
def test_anything_else_is_refused_without_an_exception(index: int) -> None:
    assert tokens.session_id_of(altered(tokens.token_for(tokens.new_session_id()))[index]) is None


def test_a_non_ascii_session_id_is_not_folded_onto_an_ascii_one() -> None:
    # Before: "é" * 32 was encoded with errors="replace", so it had the MAC of "?" * 32.
    assert (
        tokens.session_id_of(f"{'é' * 32}.{tokens.token_for('?' * 32).partition('.')[2]}") is None
    )


@given(st.text(max_size=120))
def test_any_text_is_refused_or_is_a_real_token(text: str) -> None:
    session_id = tokens.session_id_of(text)
    assert session_id is None or tokens.token_for(session_id) == text
