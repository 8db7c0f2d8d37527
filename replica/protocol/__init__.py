"""The replication protocol as one pure state machine per replica (core.py), with its inputs
(inputs.py), effects (effects.py), the primary's in-sync set (in_sync.py) and the leaf rules
(rules.py). Nothing here touches threads, sockets, storage, clocks or randomness: the shell
in replica/ carries out the effects, and the hypothesis model drives the same code."""

from replica.protocol.config import ProtocolConfig
from replica.protocol.core import ReplicaCore
from replica.protocol.roles import Role

__all__ = ["ProtocolConfig", "ReplicaCore", "Role"]
