"""Client library and CLI for the replicated chat service. Importing it changes nothing in
the process (the CLI, `python -m client`, quiets gRPC's C core for itself)."""

from client.errors import (
    AlreadyExists,
    ChatError,
    ChatUnavailableError,
    InvalidArgument,
    NotFound,
    NotLoggedInError,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from client.failover import Backoff
from client.library import ChatClient, LoginResult, Session
from client.models import CaughtUp, ClusterStatus, Message, ReplicaStatus
from client.subscription import Subscription, SubscriptionItem

__all__ = [
    "AlreadyExists",
    "Backoff",
    "CaughtUp",
    "ChatClient",
    "ChatError",
    "ChatUnavailableError",
    "ClusterStatus",
    "InvalidArgument",
    "LoginResult",
    "Message",
    "NotFound",
    "NotLoggedInError",
    "PermissionDenied",
    "RateLimited",
    "ReplicaStatus",
    "ResourceExhausted",
    "Session",
    "Subscription",
    "SubscriptionItem",
    "Unauthenticated",
    "Unavailable",
]
