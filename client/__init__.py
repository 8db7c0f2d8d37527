"""Client library and CLI for the replicated chat service.

Importing `client` loads nothing and changes nothing in the process: each name below is
imported from its module on first use. (So `python -m client` can quiet gRPC's C core for the
CLI before grpc is first imported -- see __main__.py -- without the library doing it to every
program that imports it.)"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.admin import (
        AdminClient,
    )
    from client.aio import (
        AsyncChatClient,
        AsyncSubscription,
    )
    from client.errors import (
        AlreadyExists,
        ChatError,
        ChatUnavailableError,
        InvalidArgument,
        NotFound,
        NotLoggedInError,
        PermissionDenied,
        RateLimited,
        Refused,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
    )
    from client.failover import (
        Backoff,
        Liveness,
    )
    from client.library import (
        ChatClient,
        LoginResult,
        Session,
    )
    from client.models import (
        CaughtUp,
        ClusterStatus,
        Member,
        Membership,
        MembershipChange,
        Message,
        ReplicaStatus,
    )
    from client.settings import (
        ClientHooks,
        ClientSettings,
    )
    from client.subscription import (
        Subscription,
        SubscriptionItem,
    )

_EXPORTS: dict[str, str] = {
    "AdminClient": "client.admin",
    "AsyncChatClient": "client.aio",
    "AsyncSubscription": "client.aio",
    "AlreadyExists": "client.errors",
    "Backoff": "client.failover",
    "CaughtUp": "client.models",
    "ChatClient": "client.library",
    "ChatError": "client.errors",
    "ChatUnavailableError": "client.errors",
    "ClientHooks": "client.settings",
    "ClientSettings": "client.settings",
    "ClusterStatus": "client.models",
    "InvalidArgument": "client.errors",
    "Liveness": "client.failover",
    "LoginResult": "client.library",
    "Member": "client.models",
    "Membership": "client.models",
    "MembershipChange": "client.models",
    "Message": "client.models",
    "NotFound": "client.errors",
    "NotLoggedInError": "client.errors",
    "PermissionDenied": "client.errors",
    "RateLimited": "client.errors",
    "Refused": "client.errors",
    "ReplicaStatus": "client.models",
    "ResourceExhausted": "client.errors",
    "Session": "client.library",
    "Subscription": "client.subscription",
    "SubscriptionItem": "client.subscription",
    "Unauthenticated": "client.errors",
    "Unavailable": "client.errors",
}

__all__ = [
    "AdminClient",
    "AlreadyExists",
    "AsyncChatClient",
    "AsyncSubscription",
    "Backoff",
    "CaughtUp",
    "ChatClient",
    "ChatError",
    "ChatUnavailableError",
    "ClientHooks",
    "ClientSettings",
    "ClusterStatus",
    "InvalidArgument",
    "Liveness",
    "LoginResult",
    "Member",
    "Membership",
    "MembershipChange",
    "Message",
    "NotFound",
    "NotLoggedInError",
    "PermissionDenied",
    "RateLimited",
    "Refused",
    "ReplicaStatus",
    "ResourceExhausted",
    "Session",
    "Subscription",
    "SubscriptionItem",
    "Unauthenticated",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # (looked up once)
    return value
