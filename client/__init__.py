"""Client library and CLI for the replicated chat service."""

import os

# gRPC's C core logs each failed TLS handshake on stderr at INFO, around the client's own
# one-line error; it reads this once, when grpc is first imported, so it is set before that.
# An explicit GRPC_VERBOSITY (e.g. INFO, to see them) wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from client.errors import ChatError, ChatUnavailableError, NotLoggedInError
from client.failover import Backoff
from client.library import ChatClient, LoginResult, Session
from client.subscription import Subscription, SubscriptionItem

__all__ = [
    "Backoff",
    "ChatClient",
    "ChatError",
    "ChatUnavailableError",
    "LoginResult",
    "NotLoggedInError",
    "Session",
    "Subscription",
    "SubscriptionItem",
]
