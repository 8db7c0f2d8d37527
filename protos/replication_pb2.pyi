from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogPosition(_message.Message):
    __slots__ = ("epoch", "seq")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "epoch", "type", "payload", "request_id", "created_at_unix_us")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    seq: int
    epoch: int
    type: str
    payload: str
    request_id: str
    created_at_unix_us: int
    def __init__(self, seq: _Optional[int] = ..., epoch: _Optional[int] = ..., type: _Optional[str] = ..., payload: _Optional[str] = ..., request_id: _Optional[str] = ..., created_at_unix_us: _Optional[int] = ...) -> None: ...

class SecondaryMessage(_message.Message):
    __slots__ = ("hello", "ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("secondary_index", "secondary_epoch", "position")
    SECONDARY_INDEX_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    secondary_index: int
    secondary_epoch: int
    position: LogPosition
    def __init__(self, secondary_index: _Optional[int] = ..., secondary_epoch: _Optional[int] = ..., position: _Optional[_Union[LogPosition, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("position", "in_sync", "ack_id")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    position: LogPosition
    in_sync: bool
    ack_id: int
    def __init__(self, position: _Optional[_Union[LogPosition, _Mapping]] = ..., in_sync: _Optional[bool] = ..., ack_id: _Optional[int] = ...) -> None: ...

class PrimaryMessage(_message.Message):
    __slots__ = ("primary_epoch", "divergence", "batch", "heartbeat")
    PRIMARY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    primary_epoch: int
    divergence: Divergence
    batch: Batch
    heartbeat: Heartbeat
    def __init__(self, primary_epoch: _Optional[int] = ..., divergence: _Optional[_Union[Divergence, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Divergence(_message.Message):
    __slots__ = ("primary_end",)
    PRIMARY_END_FIELD_NUMBER: _ClassVar[int]
    primary_end: LogPosition
    def __init__(self, primary_end: _Optional[_Union[LogPosition, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("events", "committed_seq", "in_sync", "echo_ack_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    ECHO_ACK_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    committed_seq: int
    in_sync: bool
    echo_ack_id: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., committed_seq: _Optional[int] = ..., in_sync: _Optional[bool] = ..., echo_ack_id: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("committed_seq", "last_seq", "in_sync", "echo_ack_id")
    COMMITTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    ECHO_ACK_ID_FIELD_NUMBER: _ClassVar[int]
    committed_seq: int
    last_seq: int
    in_sync: bool
    echo_ack_id: int
    def __init__(self, committed_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., in_sync: _Optional[bool] = ..., echo_ack_id: _Optional[int] = ...) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("candidate_index", "epoch", "position")
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    candidate_index: int
    epoch: int
    position: LogPosition
    def __init__(self, candidate_index: _Optional[int] = ..., epoch: _Optional[int] = ..., position: _Optional[_Union[LogPosition, _Mapping]] = ...) -> None: ...

class VoteReply(_message.Message):
    __slots__ = ("granted", "epoch", "reason")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    epoch: int
    reason: str
    def __init__(self, granted: _Optional[bool] = ..., epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("from_index", "from_epoch", "from_primary")
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    FROM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    from_index: int
    from_epoch: int
    from_primary: bool
    def __init__(self, from_index: _Optional[int] = ..., from_epoch: _Optional[int] = ..., from_primary: _Optional[bool] = ...) -> None: ...

class PeerState(_message.Message):
    __slots__ = ("index", "role", "epoch", "position", "applied_seq", "in_sync", "reachable", "lag")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    index: int
    role: str
    epoch: int
    position: LogPosition
    applied_seq: int
    in_sync: bool
    reachable: bool
    lag: int
    def __init__(self, index: _Optional[int] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., position: _Optional[_Union[LogPosition, _Mapping]] = ..., applied_seq: _Optional[int] = ..., in_sync: _Optional[bool] = ..., reachable: _Optional[bool] = ..., lag: _Optional[int] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("self", "primary_known", "primary_index", "secondaries", "trusted", "following_live_primary", "claims", "claim_primary")
    SELF_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_INDEX_FIELD_NUMBER: _ClassVar[int]
    SECONDARIES_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_LIVE_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    self: PeerState
    primary_known: bool
    primary_index: int
    secondaries: _containers.RepeatedCompositeFieldContainer[PeerState]
    trusted: bool
    following_live_primary: bool
    claims: bool
    claim_primary: int
    def __init__(self_, self: _Optional[_Union[PeerState, _Mapping]] = ..., primary_known: _Optional[bool] = ..., primary_index: _Optional[int] = ..., secondaries: _Optional[_Iterable[_Union[PeerState, _Mapping]]] = ..., trusted: _Optional[bool] = ..., following_live_primary: _Optional[bool] = ..., claims: _Optional[bool] = ..., claim_primary: _Optional[int] = ...) -> None: ...
