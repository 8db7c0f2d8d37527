"""Client library and CLI for the replicated chat service."""

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
