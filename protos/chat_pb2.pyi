from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListMembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("index", "address", "peer_address", "voter", "role", "epoch", "in_sync", "lag", "reachable")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    address: str
    peer_address: str
    voter: bool
    role: str
    epoch: int
    in_sync: bool
    lag: int
    reachable: bool
    def __init__(self, index: _Optional[int] = ..., address: _Optional[str] = ..., peer_address: _Optional[str] = ..., voter: _Optional[bool] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., in_sync: _Optional[bool] = ..., lag: _Optional[int] = ..., reachable: _Optional[bool] = ...) -> None: ...

class ListMembersReply(_message.Message):
    __slots__ = ("answered_by", "primary_known", "primary_index", "members", "removed", "membership_seq", "change_committed", "settings")
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHANGE_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    answered_by: int
    primary_known: bool
    primary_index: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    removed: _containers.RepeatedScalarFieldContainer[int]
    membership_seq: int
    change_committed: bool
    settings: ClusterSettings
    def __init__(self, answered_by: _Optional[int] = ..., primary_known: _Optional[bool] = ..., primary_index: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., removed: _Optional[_Iterable[int]] = ..., membership_seq: _Optional[int] = ..., change_committed: _Optional[bool] = ..., settings: _Optional[_Union[ClusterSettings, _Mapping]] = ...) -> None: ...

class ClusterSettings(_message.Message):
    __slots__ = ("min_insync", "heartbeat_interval_ms", "peer_timeout_ms", "insync_timeout_ms", "storage_timeout_ms")
    MIN_INSYNC_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    PEER_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    INSYNC_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    min_insync: int
    heartbeat_interval_ms: int
    peer_timeout_ms: int
    insync_timeout_ms: int
    storage_timeout_ms: int
    def __init__(self, min_insync: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., peer_timeout_ms: _Optional[int] = ..., insync_timeout_ms: _Optional[int] = ..., storage_timeout_ms: _Optional[int] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("request_id", "index", "address", "peer_address")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    index: int
    address: str
    peer_address: str
    def __init__(self, request_id: _Optional[str] = ..., index: _Optional[int] = ..., address: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class PromoteMemberRequest(_message.Message):
    __slots__ = ("request_id", "index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    index: int
    def __init__(self, request_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("request_id", "index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    index: int
    def __init__(self, request_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class MembershipReply(_message.Message):
    __slots__ = ("seq", "members", "removed")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    removed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., removed: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("request_id", "username", "password")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    username: str
    password: str
    def __init__(self, request_id: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("request_id", "username", "password")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    username: str
    password: str
    def __init__(self, request_id: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("session_token", "username", "undelivered_count", "unread_by_sender")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNREAD_BY_SENDER_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    username: str
    undelivered_count: int
    unread_by_sender: _containers.RepeatedCompositeFieldContainer[SenderCount]
    def __init__(self, session_token: _Optional[str] = ..., username: _Optional[str] = ..., undelivered_count: _Optional[int] = ..., unread_by_sender: _Optional[_Iterable[_Union[SenderCount, _Mapping]]] = ...) -> None: ...

class SenderCount(_message.Message):
    __slots__ = ("sender", "count")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    count: int
    def __init__(self, sender: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("request_id", "session_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_token: str
    def __init__(self, request_id: _Optional[str] = ..., session_token: _Optional[str] = ...) -> None: ...

class LogoutReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ("pattern", "page_size", "page_token")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    page_size: int
    page_token: str
    def __init__(self, pattern: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccountsReply(_message.Message):
    __slots__ = ("usernames", "next_page_token")
    USERNAMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usernames: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, usernames: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("request_id", "session_token", "recipient", "body")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_token: str
    recipient: str
    body: str
    def __init__(self, request_id: _Optional[str] = ..., session_token: _Optional[str] = ..., recipient: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class SendReply(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    def __init__(self, message_id: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "sender", "recipient", "body", "sent_at_unix_ms")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    sender: str
    recipient: str
    body: str
    sent_at_unix_ms: int
    def __init__(self, message_id: _Optional[int] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., body: _Optional[str] = ..., sent_at_unix_ms: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("session_token", "batches")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    batches: bool
    def __init__(self, session_token: _Optional[str] = ..., batches: _Optional[bool] = ...) -> None: ...

class CaughtUp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class SubscribeReply(_message.Message):
    __slots__ = ("message", "caught_up", "messages")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    message: Message
    caught_up: CaughtUp
    messages: MessageBatch
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ..., messages: _Optional[_Union[MessageBatch, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("request_id", "session_token", "message_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_token: str
    message_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., session_token: _Optional[str] = ..., message_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AckReply(_message.Message):
    __slots__ = ("acked_count",)
    ACKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    acked_count: int
    def __init__(self, acked_count: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("correlation_id", "open", "send", "ack", "pushes")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    open: SessionOpen
    send: SendRequest
    ack: AckRequest
    pushes: SetPushes
    def __init__(self, correlation_id: _Optional[int] = ..., open: _Optional[_Union[SessionOpen, _Mapping]] = ..., send: _Optional[_Union[SendRequest, _Mapping]] = ..., ack: _Optional[_Union[AckRequest, _Mapping]] = ..., pushes: _Optional[_Union[SetPushes, _Mapping]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("session_token", "push")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    push: bool
    def __init__(self, session_token: _Optional[str] = ..., push: _Optional[bool] = ...) -> None: ...

class SetPushes(_message.Message):
    __slots__ = ("on",)
    ON_FIELD_NUMBER: _ClassVar[int]
    on: bool
    def __init__(self, on: _Optional[bool] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("max_in_flight",)
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    max_in_flight: int
    def __init__(self, max_in_flight: _Optional[int] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("code", "message", "error", "retry_after_seconds")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    error: str
    retry_after_seconds: float
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("correlation_id", "opened", "send", "ack", "error", "push")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    opened: SessionOpened
    send: SendReply
    ack: AckReply
    error: RequestError
    push: SubscribeReply
    def __init__(self, correlation_id: _Optional[int] = ..., opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., send: _Optional[_Union[SendReply, _Mapping]] = ..., ack: _Optional[_Union[AckReply, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., push: _Optional[_Union[SubscribeReply, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("session_token", "other_user", "page_size", "page_token", "newest_first")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OTHER_USER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    other_user: str
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, session_token: _Optional[str] = ..., other_user: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ("request_id", "session_token", "password")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_token: str
    password: str
    def __init__(self, request_id: _Optional[str] = ..., session_token: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class DeleteAccountReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("index", "address", "role", "epoch", "last_seq", "applied_seq", "lag", "in_sync", "reachable", "knows_in_sync", "learner")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    KNOWS_IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    index: int
    address: str
    role: str
    epoch: int
    last_seq: int
    applied_seq: int
    lag: int
    in_sync: bool
    reachable: bool
    knows_in_sync: bool
    learner: bool
    def __init__(self, index: _Optional[int] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., last_seq: _Optional[int] = ..., applied_seq: _Optional[int] = ..., lag: _Optional[int] = ..., in_sync: _Optional[bool] = ..., reachable: _Optional[bool] = ..., knows_in_sync: _Optional[bool] = ..., learner: _Optional[bool] = ...) -> None: ...

class ClusterStatusReply(_message.Message):
    __slots__ = ("answered_by", "primary_index", "primary_known", "replicas")
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_INDEX_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    answered_by: int
    primary_index: int
    primary_known: bool
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, answered_by: _Optional[int] = ..., primary_index: _Optional[int] = ..., primary_known: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...
