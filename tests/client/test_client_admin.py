"""AdminClient against scripted in-process replicas: the cluster secret on every call, plain
results, the right requests, and the failover rules for the Admin service -- a NotPrimary
answer is followed (same request_id), a change the rules refuse is raised at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from client import (
    AdminClient,
    Backoff,
    ChatClient,
    ClientHooks,
    ClientSettings,
    Member,
    Membership,
    MembershipChange,
    PermissionDenied,
    Refused,
    Unauthenticated,
)
from client.channels import ChannelPool
from client.failover import retryable
from protos import chat_pb2
from protos.wire import PRIMARY_ADDRESS_KEY, SERVICE_ERROR_KEY
from tests.client.admin_fakes import (
    SECRET,
    FakeAdminReplica,
    member,
    members_reply,
    membership_reply,
    refuse,
)
from tests.client.chat_fakes import FakeTime, answer

THREE = [member(0, role="primary"), member(1), member(2)]
ADDED = answer(membership_reply(1234, [*THREE, member(3, voter=False)]))
REFUSAL = "a membership change is in progress: seq 1200 is not committed yet"


def make_admin(
    replicas: list[FakeAdminReplica], fake_time: FakeTime, *, timeout: float = 5.0
) -> AdminClient:
    settings = ClientSettings(timeout=timeout, backoff=Backoff(initial=0.05, maximum=0.2))
    hooks = ClientHooks(clock=fake_time.clock, sleep=fake_time.sleep)
    return AdminClient([r.address for r in replicas], SECRET, settings, hooks=hooks)


def admin_calls(replica: FakeAdminReplica) -> list[str]:
    return [method for method, _ in replica.metadata]


def test_every_call_carries_the_cluster_secret(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    r0 = admin_replicas[0]
    r0.script("ListMembers", answer(members_reply(THREE)))
    r0.script("AddMember", ADDED)
    r0.script("PromoteMember", answer(membership_reply(1240, THREE)))
    r0.script("RemoveMember", answer(membership_reply(1250, THREE[:2], removed=[2])))

    with make_admin(admin_replicas, fake_time) as admin:
        admin.list_members()
        admin.add_member(3, "127.0.0.1:50054")
        admin.promote_member(3)
        admin.remove_member(2)

    assert admin_calls(r0) == ["ListMembers", "AddMember", "PromoteMember", "RemoveMember"]
    assert r0.secrets() == [SECRET] * 4


def test_list_members_returns_plain_dataclasses(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    learner = member(3, voter=False, in_sync=False, lag=1200, peer_address="127.0.0.1:50064")
    admin_replicas[0].script(
        "ListMembers",
        answer(
            members_reply(
                [*THREE, learner],
                answered_by=1,
                removed=[4],
                membership_seq=1234,
                change_committed=False,
            )
        ),
    )

    with make_admin(admin_replicas, fake_time) as admin:
        membership = admin.list_members()

    assert isinstance(membership, Membership)
    assert (membership.answered_by, membership.primary_index) == (1, 0)
    assert (membership.membership_seq, membership.change_committed) == (1234, False)
    assert membership.removed == (4,)
    assert membership.members[3] == Member(
        index=3,
        address="127.0.0.1:50054",
        peer_address="127.0.0.1:50064",
        voter=False,
        role="secondary",
        epoch=3,
        in_sync=False,
        lag=1200,
        reachable=True,
    )


def test_no_primary_known_is_none(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    admin_replicas[0].script("ListMembers", answer(members_reply(THREE, primary_index=None)))

    with make_admin(admin_replicas, fake_time) as admin:
        assert admin.list_members().primary_index is None


def test_changes_send_their_requests_each_with_its_own_request_id(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    r0 = admin_replicas[0]
    r0.script("AddMember", ADDED)
    r0.script("PromoteMember", answer(membership_reply(1240, THREE)))
    r0.script("RemoveMember", answer(membership_reply(1250, THREE[:2], removed=[2])))

    with make_admin(admin_replicas, fake_time) as admin:
        added = admin.add_member(3, "127.0.0.1:50054", "127.0.0.1:50064")
        promoted = admin.promote_member(3)
        removed = admin.remove_member(2)

    (add,) = r0.requests("AddMember")
    (promote,) = r0.requests("PromoteMember")
    (remove,) = r0.requests("RemoveMember")
    assert (add.index, add.address, add.peer_address) == (3, "127.0.0.1:50054", "127.0.0.1:50064")
    assert (promote.index, remove.index) == (3, 2)
    ids = {add.request_id, promote.request_id, remove.request_id}
    assert len(ids) == 3 and "" not in ids
    assert isinstance(added, MembershipChange) and added.seq == 1234
    learner = added.member(3)
    assert learner is not None and not learner.voter
    assert (promoted.seq, removed.seq, removed.removed) == (1240, 1250, (2,))
    assert [m.index for m in removed.members] == [0, 1]


def test_add_without_a_peer_address_sends_none(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    admin_replicas[0].script("AddMember", ADDED)

    with make_admin(admin_replicas, fake_time) as admin:
        admin.add_member(3, "127.0.0.1:50054")

    assert admin_replicas[0].requests("AddMember")[0].peer_address == ""


def test_a_refused_change_is_raised_at_once(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    r0, r1 = admin_replicas
    r0.script(
        "PromoteMember",
        refuse(grpc.StatusCode.FAILED_PRECONDITION, REFUSAL, service_error="Refused"),
    )
    r1.script("PromoteMember", answer(membership_reply(1240, THREE)))

    with make_admin(admin_replicas, fake_time) as admin, pytest.raises(Refused) as raised:
        admin.promote_member(3)

    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message == REFUSAL
    assert len(r0.requests("PromoteMember")) == 1
    assert r1.received == [] and r0.requests("ClusterStatus") == []
    assert fake_time.sleeps == []


def test_not_primary_is_followed_with_the_same_request_id(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    r0, r1 = admin_replicas
    r0.script(
        "AddMember",
        refuse(
            grpc.StatusCode.FAILED_PRECONDITION,
            "not the primary",
            service_error="NotPrimary",
            primary=r1.address,
        ),
    )
    r1.script("AddMember", ADDED)

    with make_admin(admin_replicas, fake_time) as admin:
        assert admin.add_member(3, "127.0.0.1:50054").seq == 1234
        assert admin.connected_address == r1.address

    (first,) = r0.requests("AddMember")
    (second,) = r1.requests("AddMember")
    assert first.request_id == second.request_id != ""
    assert r1.secrets() == [SECRET]
    assert fake_time.sleeps == []


def test_a_plain_failed_precondition_is_still_retried(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    """No trailer at all (and no primary in ClusterStatus): as "not the primary" always was."""
    r0, r1 = admin_replicas
    r0.script("RemoveMember", refuse(grpc.StatusCode.FAILED_PRECONDITION, "not the primary"))
    r1.script("RemoveMember", answer(membership_reply(1250, THREE[:2], removed=[2])))

    with make_admin(admin_replicas, fake_time) as admin:
        assert admin.remove_member(2).seq == 1250

    assert len(r0.requests("RemoveMember")) == len(r1.requests("RemoveMember")) == 1
    assert len(r0.requests("ClusterStatus")) == 1  # where is the primary? (unscripted: no idea)


def test_unavailable_is_retried_with_the_same_request_id(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    r0 = admin_replicas[0]
    r0.script(
        "PromoteMember",
        refuse(grpc.StatusCode.UNAVAILABLE, "no primary yet"),
        refuse(grpc.StatusCode.UNAVAILABLE, "no primary yet"),
        answer(membership_reply(1240, THREE)),
    )

    with make_admin([r0], fake_time) as admin:
        assert admin.promote_member(3).seq == 1240

    requests = r0.requests("PromoteMember")
    assert len(requests) == 3
    assert len({request.request_id for request in requests}) == 1
    assert fake_time.sleeps == [0.05, 0.1]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    ],
)
def test_a_missing_or_wrong_secret_is_raised_at_once(
    admin_replicas: list[FakeAdminReplica],
    fake_time: FakeTime,
    code: grpc.StatusCode,
    kind: type[Exception],
) -> None:
    r0, r1 = admin_replicas
    r0.script("ListMembers", refuse(code, "the cluster secret differs"))

    with make_admin(admin_replicas, fake_time) as admin, pytest.raises(kind):
        admin.list_members()

    assert len(r0.metadata) == 1 and r1.received == []


@pytest.mark.parametrize("secret", ["", "héllo", "two\nlines"])
def test_a_secret_grpc_cannot_carry_is_refused_up_front(secret: str) -> None:
    with pytest.raises(ValueError, match="cluster secret"):
        AdminClient(["127.0.0.1:1"], secret)


def test_a_refusal_by_the_rules_ends_a_chat_call_too(
    admin_replicas: list[FakeAdminReplica], fake_time: FakeTime
) -> None:
    """One rule for every call: Refused is final, whichever service says it."""
    r0, r1 = admin_replicas
    r0.script(
        "Register",
        refuse(grpc.StatusCode.FAILED_PRECONDITION, "not now", service_error="Refused"),
    )
    hooks = ClientHooks(clock=fake_time.clock, sleep=fake_time.sleep)
    with ChatClient([r0.address, r1.address], hooks=hooks) as chat, pytest.raises(Refused):
        chat.register("bob", "correct horse")

    assert len(r0.requests("Register")) == 1 and r1.received == []


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailers: Any) -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "what the replica said"

    def trailing_metadata(self) -> Any:
        return self._trailers


@pytest.mark.parametrize(
    ("code", "trailers", "expected"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, ((SERVICE_ERROR_KEY, "Refused"),), False),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            ((SERVICE_ERROR_KEY, "NotPrimary"), (PRIMARY_ADDRESS_KEY, "h:1")),
            True,
        ),
        (grpc.StatusCode.FAILED_PRECONDITION, (), True),
        (grpc.StatusCode.UNAVAILABLE, (), True),
        (grpc.StatusCode.NOT_FOUND, ((SERVICE_ERROR_KEY, "NotFound"),), False),
    ],
)
def test_what_is_retryable(code: grpc.StatusCode, trailers: Any, expected: bool) -> None:
    assert retryable(_Failed(code, trailers)) is expected


def test_the_admin_stub_shares_the_channel_and_goes_with_it() -> None:
    pool = ChannelPool()
    try:
        chat, admin = pool.stub("127.0.0.1:1"), pool.admin_stub("127.0.0.1:1")
        assert pool.admin_stub("127.0.0.1:1") is admin
        assert pool.admin_stub("127.0.0.1:2") is not admin

        pool.discard("127.0.0.1:1", chat)

        assert pool.stub("127.0.0.1:1") is not chat
        assert pool.admin_stub("127.0.0.1:1") is not admin
        with pytest.raises(ValueError):  # (its channel is closed)
            admin.ListMembers(chat_pb2.ListMembersRequest(), timeout=1)
    finally:
        pool.close()


def test_a_primary_that_stops_answering_is_left_before_the_attempt_timeout(
    admin_replicas: list[FakeAdminReplica],
) -> None:
    """The watchdog covers Admin calls too: they share the channel it checks and closes."""
    frozen, alive = admin_replicas
    released = threading.Event()

    def hang(request: Any, context: grpc.ServicerContext) -> Any:
        released.wait(20)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    frozen.script("AddMember", hang)
    frozen.script("ClusterStatus", hang)
    alive.script("AddMember", ADDED)
    settings = ClientSettings(timeout=10, attempt_timeout=3)
    try:
        with AdminClient([frozen.address, alive.address], SECRET, settings) as admin:
            start = time.monotonic()
            assert admin.add_member(3, "127.0.0.1:50054").seq == 1234
            elapsed = time.monotonic() - start
    finally:
        released.set()

    assert elapsed < 1.5, f"took {elapsed:.2f}s to leave a silent replica"
    assert frozen.requests("AddMember")[0].request_id == alive.requests("AddMember")[0].request_id
