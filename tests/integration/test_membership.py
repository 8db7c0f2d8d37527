"""Membership changes with real replica processes (issue 25): a replica started with --join
and no config file, added as a learner, promoted once caught up, the old primary SIGKILLed and
removed -- under concurrent sends, nothing acknowledged lost or delivered twice; and the
refusals an operator meets, each one line."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import CLUSTER_SECRET_KEY, SERVICE_ERROR_KEY
from tests.integration.cluster_checks import (
    check_exactly_once,
    db_url,
    read_inbox,
    register_users,
    replica_state,
    sending,
    three_replicas,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(cluster_processes: Callable[..., ClusterProcesses]) -> Iterator[ClusterProcesses]:
    with three_replicas(cluster_processes, "sqlite", "members") as made:
        yield made


def admin(cluster: ClusterProcesses, index: int) -> chat_pb2_grpc.AdminStub:
    return chat_pb2_grpc.AdminStub(cluster.channel(index))  # type: ignore[no-untyped-call]


def secret(cluster: ClusterProcesses) -> tuple[tuple[str, str], ...]:
    return ((CLUSTER_SECRET_KEY, cluster.cluster_secret),)


def members(cluster: ClusterProcesses, index: int) -> chat_pb2.ListMembersReply:
    return admin(cluster, index).ListMembers(
        chat_pb2.ListMembersRequest(), timeout=2, metadata=secret(cluster)
    )


def change(cluster: ClusterProcesses, on: int, method: str, **fields: object) -> object:
    """An admin change asked of replica `on` (the primary), with a fresh request id."""
    request_type = {
        "AddMember": chat_pb2.AddMemberRequest,
        "PromoteMember": chat_pb2.PromoteMemberRequest,
        "RemoveMember": chat_pb2.RemoveMemberRequest,
    }[method]
    request = request_type(request_id=str(uuid.uuid4()), **fields)
    return getattr(admin(cluster, on), method)(request, timeout=15, metadata=secret(cluster))


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def error_kind(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(SERVICE_ERROR_KEY)  # type: ignore[attr-defined]


def promote_when_caught_up(cluster: ClusterProcesses, primary: int, index: int) -> None:
    """Promote `index`, retrying while the primary refuses it as not connected yet or still
    catching up."""

    def promoted() -> bool:
        try:
            change(cluster, primary, "PromoteMember", index=index)
        except grpc.RpcError as exc:
            # (not connected yet, or catching up: the rules say so, and wait)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and error_kind(exc) == "Refused":
                return False
            raise
        return True

    wait_until(
        promoted, 30, lambda: f"replica {index} never promotable: {members(cluster, primary)}"
    )


def test_add_promote_kill_and_remove_the_old_primary_under_load(
    cluster: ClusterProcesses,
) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "dave"])
    with sending(cluster, ["alice", "bob"], "dave") as load:
        load.wait_for_acks(20)
        new = cluster.add_joiner(host="127.0.0.14")
        cluster.start(new)
        added = change(cluster, primary, "AddMember", index=new, address=cluster.address(new))
        assert [(m.index, m.voter) for m in added.members] == [  # type: ignore[attr-defined]
            (0, True),
            (1, True),
            (2, True),
            (new, False),
        ]
        # A learner: streamed to, caught up, but in nobody's count.
        wait_until(
            lambda: any(
                m.index == new and m.reachable and m.lag == 0 and not m.voter
                for m in members(cluster, primary).members
            ),
            30,
            lambda: f"the learner never caught up: {members(cluster, primary)}",
        )
        load.wait_for_acks(load.acknowledged_count() + 20)
        promote_when_caught_up(cluster, primary, new)
        listed = members(cluster, primary)
        assert [m.index for m in listed.members if m.voter] == [0, 1, 2, new]
        load.wait_for_acks(load.acknowledged_count() + 20)
        cluster.kill(primary)
        survivors = [i for i in range(4) if i != primary]
        new_primary = wait_for_primary(cluster, survivors)
        load.wait_for_acks(load.acknowledged_count() + 20)
        removed = change(cluster, new_primary, "RemoveMember", index=primary)
        assert list(removed.removed) == [primary]  # type: ignore[attr-defined]
        load.wait_for_acks(load.acknowledged_count() + 20)
    check_exactly_once(load.log, read_inbox(cluster, "dave"))
    # The three left hold the same log and projections, the new replica's from its own log.
    wait_until(
        lambda: len({replica_state(db_url(cluster, i))[2] for i in survivors}) == 1,
        30,
        "the remaining replicas did not converge",
    )
    # Its index is never used again.
    error = refusal(
        lambda: change(cluster, new_primary, "AddMember", index=primary, address="127.0.0.15:1")
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
    assert "never reused" in (error.details() or "")


def test_the_rules_refuse_with_one_clear_line(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    secondary = (primary + 1) % 3
    # (a write committed: so is the start of the primary's epoch, before which it refuses
    # every change -- "try again shortly")
    register_users(cluster, ["alice"])
    # Not the primary: sent there, as a client's write is.
    error = refusal(lambda: change(cluster, secondary, "RemoveMember", index=primary))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_kind(error) == "NotPrimary"
    # The primary cannot remove itself; nobody removes a stranger; an index in use is taken.
    error = refusal(lambda: change(cluster, primary, "RemoveMember", index=primary))
    assert (error.code(), error_kind(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "Refused")
    assert "cannot remove itself" in (error.details() or "")
    error = refusal(lambda: change(cluster, primary, "RemoveMember", index=7))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = refusal(lambda: change(cluster, primary, "PromoteMember", index=secondary))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = refusal(
        lambda: change(cluster, primary, "AddMember", index=secondary, address="127.0.0.15:1")
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = refusal(lambda: change(cluster, primary, "AddMember", index=3, address="nowhere"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A learner that is not running lags: its promotion is refused, saying so.
    change(cluster, primary, "AddMember", index=3, address="127.0.0.15:1")
    error = refusal(lambda: change(cluster, primary, "PromoteMember", index=3))
    assert (error.code(), error_kind(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "Refused")
    assert "replica 3" in (error.details() or ""), error.details()
    # Without the secret: refused before anything is read.
    stub = admin(cluster, primary)
    error = refusal(lambda: stub.ListMembers(chat_pb2.ListMembersRequest(), timeout=2))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # Removing the learner that never came: fine, and the membership says so.
    change(cluster, primary, "RemoveMember", index=3)
    listed = members(cluster, primary)
    assert [m.index for m in listed.members] == [0, 1, 2]
    assert list(listed.removed) == [3]
    assert listed.change_committed


def test_shrink_to_one_voter_each_removed_replica_stops_by_itself(
    cluster: ClusterProcesses,
) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    others = [i for i in range(3) if i != primary]
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(10)
        for index in others:
            change(cluster, primary, "RemoveMember", index=index)
            # Told it is out once the removal is committed, it leaves: exit status 0, and
            # one line says why.
            assert cluster.wait_exit(index, 20) == 0
            assert "removed from the cluster" in cluster.log_text(index), cluster.log_tail(index)
            load.wait_for_acks(load.acknowledged_count() + 10)
        listed = members(cluster, primary)
        assert [(m.index, m.voter) for m in listed.members] == [(primary, True)]
        # The last voter stays.
        error = refusal(lambda: change(cluster, primary, "RemoveMember", index=primary))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    check_exactly_once(load.log, read_inbox(cluster, "dave"))


def test_force_new_cluster_after_a_total_loss(
    cluster: ClusterProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replica down, and only replica 1 ever comes back: the override makes it the one
    voter, from its own log (everything it held is kept), and writes go on. Replica 0, back
    later, learns it was removed and stops by itself."""
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "dave"])
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(20)
    wait_all_running_follow(cluster, primary)
    cluster.kill_together([0, 1, 2])
    plain = cluster.command
    monkeypatch.setattr(
        cluster, "command", lambda i: plain(i) + (["--force-new-cluster"] if i == 1 else [])
    )
    cluster.start(1)
    assert wait_for_primary(cluster, [1]) == 1
    assert "FORCED A NEW CLUSTER" in cluster.log_text(1)
    listed = members(cluster, 1)
    assert [(m.index, m.voter) for m in listed.members] == [(1, True)]
    assert list(listed.removed) == [0, 2]
    with sending(cluster, ["bob"], "dave") as more:  # (other bodies than the first load's)
        more.wait_for_acks(10)
    log = load.log
    log.acknowledged.update(more.log.acknowledged)
    log.failed.extend(more.log.failed)
    # Replica 1 was in sync when the cluster went down: nothing acknowledged is lost.
    check_exactly_once(log, read_inbox(cluster, "dave"))
    cluster.start(0, wait=False)
    assert cluster.wait_exit(0, 30) == 0, cluster.log_tail(0)
    assert "removed from the cluster" in cluster.log_text(0)


def test_replace_a_replica_whose_database_was_deleted(cluster: ClusterProcesses) -> None:
    """A host lost with its disk: the operator removes it, starts a new replica with an empty
    database under a new index, waits and promotes it -- sends going on throughout."""
    primary = wait_for_primary(cluster)
    lost = (primary + 1) % 3
    register_users(cluster, ["alice", "dave"])
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(20)
        cluster.kill(lost)
        shutil.rmtree(cluster.specs[lost].data_dir)  # (its SQLite database with it)
        change(cluster, primary, "RemoveMember", index=lost)
        load.wait_for_acks(load.acknowledged_count() + 10)
        new = cluster.add_joiner(host="127.0.0.14")
        cluster.start(new)
        change(cluster, primary, "AddMember", index=new, address=cluster.address(new))
        promote_when_caught_up(cluster, primary, new)
        load.wait_for_acks(load.acknowledged_count() + 20)
    listed = members(cluster, primary)
    assert [(m.index, m.voter) for m in listed.members] == sorted(
        [(primary, True), (3 - primary - lost, True), (new, True)]
    )
    check_exactly_once(load.log, read_inbox(cluster, "dave"))
    running = [i for i in range(4) if i != lost]
    wait_until(
        lambda: len({replica_state(db_url(cluster, i))[2] for i in running}) == 1,
        30,
        "the replicas did not converge",
    )


def test_grow_to_five_voters_and_back_to_one(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    with sending(cluster, ["alice"], "dave") as load:
        for host in ("127.0.0.14", "127.0.0.15"):
            new = cluster.add_joiner(host=host)
            cluster.start(new)
            change(cluster, primary, "AddMember", index=new, address=cluster.address(new))
            promote_when_caught_up(cluster, primary, new)
            load.wait_for_acks(load.acknowledged_count() + 10)
        assert [m.index for m in members(cluster, primary).members if m.voter] == [0, 1, 2, 3, 4]
        for index in [i for i in range(5) if i != primary]:
            change(cluster, primary, "RemoveMember", index=index)
            assert cluster.wait_exit(index, 20) == 0, cluster.log_tail(index)
            load.wait_for_acks(load.acknowledged_count() + 10)
    assert [(m.index, m.voter) for m in members(cluster, primary).members] == [(primary, True)]
    check_exactly_once(load.log, read_inbox(cluster, "dave"))


def test_a_cluster_of_joined_replicas_restarts_after_a_total_crash(
    cluster: ClusterProcesses,
) -> None:
    """Every replica of the config replaced by ones that joined (found by the chaos runner):
    after a total crash none of the addresses they joined through answers; each starts from
    what it saved when it joined and its own log, and they elect a primary."""
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    joined = []
    for host in ("127.0.0.14", "127.0.0.15"):
        new = cluster.add_joiner(host=host)
        cluster.start(new)
        change(cluster, primary, "AddMember", index=new, address=cluster.address(new))
        promote_when_caught_up(cluster, primary, new)
        joined.append(new)
    for index in [i for i in range(3) if i != primary]:
        change(cluster, primary, "RemoveMember", index=index)
        assert cluster.wait_exit(index, 20) == 0
    cluster.kill(primary)
    successor = wait_for_primary(cluster, joined)
    change(cluster, successor, "RemoveMember", index=primary)
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(10)
    cluster.kill_together(joined)
    for index in joined:
        cluster.start(index, wait=False)
    wait_for_primary(cluster, joined, timeout=30)
    assert "starts from what the cluster told it when it joined" in cluster.log_text(joined[0])
    check_exactly_once(load.log, read_inbox(cluster, "dave"))
