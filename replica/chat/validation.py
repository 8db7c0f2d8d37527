"""Input validation: every field a client sends is checked here before it reaches a query."""

from __future__ import annotations

import re
from typing import Final

from projections.queries import LIKE_ESCAPE
from protos.wire import MAX_ACK_IDS, MAX_PAGE_SIZE
from replica.errors import InvalidArgument

USERNAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
REQUEST_ID_RE: Final = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces
MAX_PASSWORD_CHARS: Final = 1024
MIN_PASSWORD_CHARS: Final = 8  # for new accounts (cluster setting min_password_length)
MAX_BODY_BYTES: Final = 4096
MAX_PATTERN_CHARS: Final = 64
DEFAULT_PAGE_SIZE: Final = 100


def username(value: str, field: str = "username") -> str:
    """The canonical (lower-case) username, or InvalidArgument."""
    # ASCII before lower-casing: "\u212a" (KELVIN SIGN) would otherwise become "k".
    canonical = value.strip().lower() if value.isascii() else value
    if not USERNAME_RE.fullmatch(canonical):
        raise InvalidArgument(
            f"{field} {_show(value)} is not valid: use 1-32 characters from a-z, 0-9, '_', '.', "
            "'-', starting with a letter or digit"
        )
    return canonical


def password(value: str) -> str:
    if not value:
        raise InvalidArgument("password must not be empty")
    if len(value) > MAX_PASSWORD_CHARS:
        raise InvalidArgument(f"password is longer than {MAX_PASSWORD_CHARS} characters")
    return value


def body(value: str) -> str:
    if not value:
        raise InvalidArgument("message must not be empty")
    if not value.strip():
        raise InvalidArgument("message must not be only blanks")
    size = len(value.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise InvalidArgument(f"message is {size} bytes; the limit is {MAX_BODY_BYTES} bytes")
    return value


def request_id(value: str) -> str:
    if not REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument(
            "request_id must be 1-64 printable ASCII characters without spaces (e.g. a UUID)"
        )
    return value


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size must not be negative")
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {value} is above the limit of {MAX_PAGE_SIZE}")
    return value


def like_pattern(pattern: str) -> str:
    """Translate a shell-style pattern (`*`, `?`) into a LIKE pattern with `\\` as the escape
    character. No user-supplied regex is ever evaluated; LIKE's own wildcards are escaped."""
    pattern = pattern or "*"
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgument(f"pattern is longer than {MAX_PATTERN_CHARS} characters")
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789_.-*?")
    lowered = pattern.lower()
    bad = sorted({c for c in lowered if c not in allowed})
    if bad:
        raise InvalidArgument(
            f"pattern {_show(pattern)} contains {_show(''.join(bad))}: usernames only use a-z, "
            "0-9, '_', '.', '-'; use '*' for any run of characters and '?' for one"
        )
    out = []
    for c in lowered:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + c)
        else:
            out.append(c)
    return "".join(out)


def username_page_token(token: str) -> str:
    """List pages continue after the last username returned."""
    if token and not USERNAME_RE.fullmatch(token):
        raise InvalidArgument("page_token is not one this server returned")
    return token


def message_page_token(token: str) -> int:
    """History pages continue after the last message id returned."""
    if not token:
        return 0
    # ASCII digits only (str.isdigit() also accepts e.g. '²'), within a BIGINT.
    if not (token.isascii() and token.isdigit()) or len(token) > 19 or int(token) >= 2**63:
        raise InvalidArgument("page_token is not one this server returned")
    return int(token)


def message_ids(ids: list[int]) -> list[int]:
    if not ids:
        raise InvalidArgument("message_ids must not be empty")
    if len(ids) > MAX_ACK_IDS:
        raise InvalidArgument(f"at most {MAX_ACK_IDS} message ids per ack")
    if any(i <= 0 or i >= 2**63 for i in ids):
        raise InvalidArgument("message ids are positive integers")
    return sorted(set(ids))


def _show(value: str, limit: int = 40) -> str:
    """repr() of client input, cut short: every character may take 10 escaped (e.g. '\U0001f600'),
    and a status message must stay a sentence, not a dump."""
    if len(value) <= limit and len(repr(value)) <= limit + 2:
        return repr(value)
    cut = value[:limit]
    while len(repr(cut + "...")) > limit + 2:
        cut = cut[:-1]
    return repr(cut + "...")
