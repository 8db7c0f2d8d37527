"""Partitions between real hosts (a network namespace per replica, packets dropped silently on
the switch between them): a half-open stream, and clients that reach only the minority side."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import ClientSettings
from client.errors import ChatUnavailableError
from client.library import ChatClient
from tests.conftest import require_test_hosts
from tests.integration.cluster_checks import (
    PASSWORD,
    SETTINGS,
    Senders,
    primary_of,
    register_users,
    seen_by,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until
from testsupport.netns import CLIENT, TestHosts

pytestmark = [pytest.mark.slow, pytest.mark.hosts]
INSYNC_TIMEOUT = SETTINGS["insync_timeout_ms"] / 1000


@pytest.fixture(params=[1, 2], ids=["min_insync=1", "min_insync=2"])
def on_hosts(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TestHosts, ClusterProcesses]]:
    require_test_hosts()
    with TestHosts(3) as hosts:
        cluster = ClusterProcesses(
            tmp_path / "cluster",
            3,
            hosts=[hosts.address(i) for i in range(3)],
            ports=[7000] * 3,
            launch_prefixes=[hosts.exec_prefix(i) for i in range(3)],
            settings={**SETTINGS, "min_insync": request.param},
        )
        with cluster:
            cluster.start_all()
            register_users(cluster, ["alice", "bob"])
            wait_all_running_follow(cluster, wait_for_primary(cluster))
            yield hosts, cluster


@pytest.mark.parametrize("on_hosts", [2], indirect=True, ids=["min_insync=2"])
def test_a_secondary_gone_silent_leaves_a_half_open_stream_that_costs_the_timeouts(
    on_hosts: tuple[TestHosts, ClusterProcesses],
) -> None:
    """Its host drops everything without a word (no FIN, no RST): the primary's stream to it
    stays open, half of it dead. The primary must not wait on it for longer than the in-sync
    timeouts (told it is behind, then removed unheard), must go on acknowledging, and must take
    it back once the network heals. (min_insync = 2, where the other secondary alone keeps
    writes going; both values meet this fault in the short chaos run.)"""
    hosts, cluster = on_hosts
    primary = wait_for_primary(cluster)
    victim = next(i for i in range(3) if i != primary)
    load = Senders(cluster, ["alice"], "bob")
    load.start()
    try:
        load.wait_for_acks(20)
        hosts.set_faults(hosts.isolate(victim))
        cut_at = time.monotonic()
        wait_until(
            lambda: (seen := seen_by(cluster, primary, victim)) is not None and not seen.in_sync,
            10,
            f"primary {primary} to drop silent replica {victim} from the in-sync set",
        )
        removed_after = time.monotonic() - cut_at
        assert removed_after < 3 * INSYNC_TIMEOUT + 1, f"removed only after {removed_after:.1f}s"
        acked = load.acknowledged_count()
        load.wait_for_acks(acked + 20, timeout=10)
        assert primary_of(cluster, primary) == primary, "the primary changed over a secondary"
        hosts.heal()
        wait_all_running_follow(cluster, primary, timeout=20)
        # ...and it hears so itself, which is what lets it take over later (ClusterStatus
        # reports each replica's own word beside the primary's).
        wait_until(
            lambda: (seen := seen_by(cluster, victim, victim)) is not None and seen.knows_in_sync,
            10,
            f"replica {victim} to know it is in sync again",
        )
    finally:
        log = load.stop()
    assert log.acknowledged and not log.failed, f"{len(log.failed)} sends failed"


def test_a_client_that_reaches_only_the_cut_off_primary_is_told_unavailable_then_moves(
    on_hosts: tuple[TestHosts, ClusterProcesses],
) -> None:
    """The primary cut off from both secondaries, and the client cut off from them too: it
    reaches only the old primary, which must not acknowledge (its writes could not be kept),
    must stop saying it is primary within about the in-sync timeout, and the client must get
    a clear UNAVAILABLE. Once it reaches the others again, it finds the new primary itself."""
    hosts, cluster = on_hosts
    old = wait_for_primary(cluster)
    others = [i for i in range(3) if i != old]
    client = ChatClient(cluster.addresses, ClientSettings(timeout=4.0))
    try:
        client.login("alice", PASSWORD)
        client.send("bob", "before the cut")
        cuts = [f for s in others for f in hosts.cut(old, s)]
        cuts += [f for s in others for f in hosts.cut(CLIENT, s)]
        hosts.set_faults(cuts)
        cut_at = time.monotonic()
        with pytest.raises(ChatUnavailableError) as refused:
            client.send("bob", "to the minority side")
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        wait_until(
            lambda: primary_of(cluster, old) is None,
            3 * INSYNC_TIMEOUT + 2,
            f"the cut-off primary {old} to stop saying it is primary",
        )
        assert time.monotonic() - cut_at < 3 * INSYNC_TIMEOUT + 2 + 4.0 + 1
        hosts.set_faults([f for s in others for f in hosts.cut(old, s)])  # the client is back
        new_id = client.send("bob", "after the move")
        new = wait_for_primary(cluster, others, timeout=10)
        assert client.connected_address == cluster.address(new)
        assert new_id > 0
        hosts.heal()
        wait_all_running_follow(cluster, new, timeout=20)
    finally:
        client.close()
    with ChatClient(cluster.addresses, ClientSettings(timeout=10.0)) as reader:
        reader.login("bob", PASSWORD)
        bodies = [m.body for m in reader.history("alice")]
    assert "before the cut" in bodies and "after the move" in bodies
    assert "to the minority side" not in bodies, "a send refused as unavailable was kept"
