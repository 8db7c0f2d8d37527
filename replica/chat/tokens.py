"""Session tokens: a random session id plus an HMAC of it under the cluster secret.

The id is in the replicated log (as is its revocation), so a token stays valid on whichever
replica becomes primary, and a retried Login can return the very same token. The MAC means a
token cannot be made up from a session id read elsewhere."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

# What token_for() makes: 32 lower-case hex digits, a dot, 64 lower-case hex digits. Anything
# else (other characters, non-ASCII, other lengths) is refused before the MAC is computed.
_TOKEN_RE: Final = re.compile(r"([0-9a-f]{32})\.([0-9a-f]{64})")


class SessionTokens:
    def __init__(self, cluster_secret: bytes) -> None:
        if len(cluster_secret) < 16:
            raise ValueError("the cluster secret must be at least 16 bytes")
        self._secret = cluster_secret

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(16)

    def token_for(self, session_id: str) -> str:
        return f"{session_id}.{self._mac(session_id)}"

    def session_id_of(self, token: str) -> str | None:
        """The session id in a well-formed, authentic token; None otherwise."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        session_id, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(session_id)):
            return None
        return session_id

    def _mac(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode("ascii"), hashlib.sha256).hexdigest()
