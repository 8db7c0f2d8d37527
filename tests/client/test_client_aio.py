"""AsyncChatClient (grpc.aio) against real replicas: the same calls, typed errors and plain
results as ChatClient; a call addressed to a secondary finds the primary; and across a
SIGKILL of the primary, sends keep being acknowledged and each acknowledged one is in the
log exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from client import (
    AlreadyExists,
    AsyncChatClient,
    CaughtUp,
    ClientSettings,
    ClusterStatus,
    Message,
    NotFound,
    NotLoggedInError,
    Unauthenticated,
)
from tests.integration.cluster_checks import wait_all_running_follow, wait_for_primary
from testsupport.harness import ClusterProcesses

pytestmark = pytest.mark.slow
PASSWORD = "correct horse"


def name(word: str) -> str:
    return f"{word}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    with ClusterProcesses(tmp_path_factory.mktemp("aio-one"), 1) as cluster:
        cluster.start(0)
        wait_for_primary(cluster)
        yield cluster


def test_the_calls_their_errors_and_their_results(one: ClusterProcesses) -> None:
    async def scenario() -> None:
        async with AsyncChatClient(one.addresses) as alice, AsyncChatClient(one.addresses) as bob:
            a = await alice.register(name("alice"), PASSWORD)
            b = await bob.register(name("bob"), PASSWORD)
            with pytest.raises(AlreadyExists):
                await bob.register(b, PASSWORD)
            with pytest.raises(NotLoggedInError):
                await alice.send(b, "too early")
            with pytest.raises(Unauthenticated):
                await alice.login(a, "wrong password")
            login = await alice.login(a, PASSWORD)
            assert login.username == a and login.undelivered_count == 0
            await bob.login(b, PASSWORD)
            with pytest.raises(NotFound):
                await alice.send(name("nobody"), "hello?")
            first = await alice.send(b, "one")
            second = await alice.send(b, "two")
            assert [m.body async for m in alice.history(b)] == ["one", "two"]
            assert a in [n async for n in bob.list_accounts("alice*")]

            subscription = bob.subscribe()
            items = [await anext(subscription) for _ in range(3)]
            assert [type(i) for i in items] == [Message, Message, CaughtUp]
            assert [i.message_id for i in items if isinstance(i, Message)] == [first, second]
            third = await alice.send(b, "three")  # pushed live
            live = await asyncio.wait_for(anext(subscription), 10)
            assert isinstance(live, Message) and (live.message_id, live.body) == (third, "three")
            waiting = asyncio.ensure_future(anext(subscription))  # (nothing more comes)
            await asyncio.sleep(0.2)
            subscription.cancel()
            with pytest.raises(StopAsyncIteration):  # it ends; no CancelledError leaks
                await asyncio.wait_for(waiting, 5)
            assert await bob.ack([first, second, third]) == 3

            status = await alice.cluster_status()
            assert type(status) is ClusterStatus and status.primary_index == 0
            await bob.delete_account(PASSWORD)
            with pytest.raises(NotFound):
                await alice.send(b, "gone")

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    with ClusterProcesses(tmp_path_factory.mktemp("aio-three"), 3) as cluster:
        cluster.start_all()
        wait_all_running_follow(cluster, wait_for_primary(cluster))
        yield cluster


def test_a_call_to_a_secondary_finds_the_primary_and_sends_survive_its_sigkill(
    three: ClusterProcesses,
) -> None:
    primary = wait_for_primary(three)
    # The secondaries first: the first call must be redirected.
    order = [three.address(i) for i in range(3) if i != primary] + [three.address(primary)]

    async def scenario() -> tuple[list[int], list[int]]:
        settings = ClientSettings(timeout=20.0)
        async with AsyncChatClient(order, settings) as alice, AsyncChatClient(order) as bob:
            a = await alice.register(name("alice"), PASSWORD)
            b = await bob.register(name("bob"), PASSWORD)
            assert alice.connected_address == three.address(primary)
            await alice.login(a, PASSWORD)
            await bob.login(b, PASSWORD)
            acked = [await alice.send(b, f"before {n}") for n in range(5)]
            three.kill(primary)
            acked += [await alice.send(b, f"after {n}") for n in range(5)]
            assert alice.connected_address != three.address(primary)
            seen = [m.message_id async for m in bob.history(a)]
            return acked, seen

    acked, seen = asyncio.run(scenario())
    assert len(seen) == len(set(seen)) == 10
    assert acked == seen
