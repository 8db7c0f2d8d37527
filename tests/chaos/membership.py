"""Membership changes for the chaos runs: the rules that keep the cluster's size in range (pure,
unit-tested), where a new replica lives (an address and a database of its own; on test hosts, a
host no member uses), and the operator's changes through the Admin API, retried while the
cluster's rules say "try again" -- as an operator would, bounded in time.

A run starts with three voters; the membership faults keep it between MIN_VOTERS and
MAX_VOTERS, and the other faults run only where the voters they leave can still elect and
acknowledge (`survivors_needed`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import grpc
from sqlalchemy.engine import make_url

from client import AdminClient, ClientSettings
from client.errors import AlreadyExists, ChatError, NotFound, Refused, Unavailable
from client.models import Membership
from protos import chat_pb2, chat_pb2_grpc
from protos.wire import CLUSTER_SECRET_KEY
from testsupport.databases import drop_mysql_database
from testsupport.harness import ClusterProcesses
from testsupport.host_mariadb import HostMariaDB
from testsupport.netns import TestHosts
from testsupport.tcpproxy import TcpProxy

MIN_VOTERS = 2
MAX_VOTERS = 5
# A test host per voter, and one more: a replacement starts while the replica it replaces
# may still hold its host (killed, its data being deleted).
HOSTS_WITH_MEMBERSHIP = MAX_VOTERS + 1
CHANGE_TIMEOUT = 60.0  # one change, retried while refused "try again" or no primary answers
# A promotion waits for the learner to copy the whole log from an empty database under the
# load: 200k events took 30-35 s on a busy 2-core machine.
PROMOTE_TIMEOUT = 180.0
ADMIN_CALL_TIMEOUT = 20.0  # one AdminClient call, across its failovers
# Refusals that time (a commit, a learner's catch-up) lifts; any other is a wrong request.
PASSING_REFUSALS = ("try again", "not connected to the primary")


class ChangeFailed(AssertionError):
    """A membership change the cluster refused for good, or did not make in time."""


# -- the size rules (pure) -------------------------------------------------------------------


def survivors_needed(voters: int, min_insync: int) -> int:
    """How many of `voters` must be up and reachable for the cluster to elect a primary and
    acknowledge writes: with min_insync 1, one that vouches; with more, the votes an election
    needs, `max(min_insync, voters - min_insync + 1)` (docs/replication.md, Elections)."""
    if min_insync <= 1:
        return 1
    return max(min_insync, voters - min_insync + 1)


def size_fits(
    voters: int,
    min_insync: int,
    *,
    takes_out: int = 0,
    voter_change: int = 0,
    dip: int = 0,
) -> bool:
    """Whether a fault may run on `voters` voters: the `takes_out` replicas it stops or cuts
    off leave enough to go on, the fewest voters during it (`voters + dip`) are at least
    min_insync and one, and a membership change (`voter_change`) keeps the voters within
    [MIN_VOTERS, MAX_VOTERS]."""
    if voters - takes_out < survivors_needed(voters, min_insync):
        return False
    if voters + dip < max(1, min_insync):
        return False
    return voter_change == 0 or MIN_VOTERS <= voters + voter_change <= MAX_VOTERS


def free_host(count: int, taken: Collection[int]) -> int | None:
    """The lowest of `count` test hosts that no member holds (None: all are held)."""
    return next((h for h in range(count) if h not in taken), None)


def loopback_host(index: int) -> str:
    """Replica `index`'s own loopback address: 127.0.0.11 for replica 0, as the first three's
    (indexes are never reused, so neither is an address)."""
    if not 0 <= index <= 243:
        raise ValueError(f"no loopback address for replica {index}")
    return f"127.0.0.{11 + index}"


def is_passing_refusal(message: str) -> bool:
    return any(words in message for words in PASSING_REFUSALS)


# -- where a new replica lives ---------------------------------------------------------------


@dataclass
class Placement:
    """Where the run's replicas live, and where a new one goes: a loopback address of its own
    (SQLite in its data dir, or a MySQL database of its own behind a proxy of its own), or a
    test host no member holds (SQLite, or a database on that host's MariaDB)."""

    backend: str
    hosts: TestHosts | None = None
    servers: list[HostMariaDB] = field(default_factory=list)  # a MariaDB per test host
    proxies: list[TcpProxy] = field(default_factory=list)  # loopback MySQL: one per replica
    mysql_server_url: str = ""  # loopback MySQL: the server behind the proxies
    mysql_tag: str = ""
    replica_port: int = 7000  # on test hosts
    urls: list[str | None] = field(default_factory=list)  # every replica's database, by index
    host_of: dict[int, int] = field(default_factory=dict)  # test hosts: replica -> host

    def host(self, index: int) -> int:
        """The test host replica `index` runs on."""
        return self.host_of.get(index, index)

    def mysql_url(self, index: int, port: int) -> str:
        server = make_url(self.mysql_server_url)
        url = server.set(port=port, database=f"chat_chaos_{self.mysql_tag}_{index}")
        return url.render_as_string(hide_password=False)

    def new_replica(self, cluster: ClusterProcesses, members: Sequence[int]) -> int:
        """A new replica (the next index, an empty database), set up to join through
        `members` -- not started."""
        index = len(cluster.specs)
        join = [cluster.address(i) for i in members]
        if self.hosts is None:
            url: str | None = None
            if self.backend == "mysql":
                server = make_url(self.mysql_server_url)
                proxy = TcpProxy((server.host or "127.0.0.1", server.port or 3306))
                self.proxies.append(proxy)
                assert len(self.proxies) == index + 1, "a proxy per replica, by index"
                url = self.mysql_url(index, proxy.port)
            made = cluster.add_joiner_at(loopback_host(index), db_url=url, join=join)
        else:
            host = free_host(self.hosts.count, {self.host(i) for i in members})
            if host is None:
                raise ChangeFailed(f"no free test host for a new replica (members {members})")
            self.host_of[index] = host
            url = self.servers[host].url(f"chat_chaos_{index}") if self.servers else None
            # A port of its own: a host is reused, an address never is.
            made = cluster.add_joiner_at(
                self.hosts.address(host),
                port=self.replica_port + index,
                db_url=url,
                join=join,
                launch_prefix=self.hosts.exec_prefix(host),
            )
        assert made == index
        self.urls.append(url)
        return index

    def where(self, cluster: ClusterProcesses, index: int) -> str:
        if self.hosts is None:
            return cluster.address(index)
        return f"{cluster.address(index)} on host {self.host(index)}"

    def forget(self, cluster: ClusterProcesses, index: int) -> None:
        """Replica `index`'s disk is lost: its data dir and its database go (its host, if any,
        is free once it is no member)."""
        shutil.rmtree(cluster.specs[index].data_dir, ignore_errors=True)
        url = cluster.specs[index].db_url
        if url is not None:
            drop_mysql_database(url)


# -- the operator ------------------------------------------------------------------------------


def members_seen_by(cluster: ClusterProcesses, index: int) -> Membership | None:
    """The membership as replica `index` answers ListMembers (None: no answer)."""
    stub = chat_pb2_grpc.AdminStub(cluster.channel(index))  # type: ignore[no-untyped-call]
    try:
        reply = stub.ListMembers(
            chat_pb2.ListMembersRequest(),
            timeout=2.0,
            metadata=((CLUSTER_SECRET_KEY, cluster.cluster_secret),),
        )
    except grpc.RpcError:
        return None
    return Membership.from_proto(reply)


@dataclass
class Operator:
    """Membership changes as an operator makes them: `python -m client admin member ...`
    (AdminClient) against the members there are now, retried while the rules refuse with a
    "try again" or no primary answers, for up to `timeout` seconds."""

    cluster: ClusterProcesses
    members: Callable[[], list[int]]
    timeout: float = CHANGE_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def admin(self) -> AdminClient:
        return AdminClient(
            [self.cluster.address(i) for i in self.members()],
            self.cluster.cluster_secret,
            ClientSettings(timeout=ADMIN_CALL_TIMEOUT),
        )

    def add(self, index: int) -> None:
        address = self.cluster.address(index)
        self._change(
            f"adding replica {index} at {address}",
            lambda admin: admin.add_member(index, address),
            lambda listed: any(m.index == index for m in listed.members),
        )

    def promote(self, index: int) -> None:
        """Promote learner `index`, retrying while it is catching up."""
        self._change(
            f"promoting replica {index}",
            lambda admin: admin.promote_member(index),
            lambda listed: any(m.index == index and m.voter for m in listed.members),
            timeout=max(self.timeout, PROMOTE_TIMEOUT),
        )

    def remove(self, index: int) -> None:
        self._change(
            f"removing replica {index}",
            lambda admin: admin.remove_member(index),
            lambda listed: index in listed.removed,
        )

    def _change(
        self,
        what: str,
        call: Callable[[AdminClient], object],
        done: Callable[[Membership], bool],
        *,
        timeout: float | None = None,
    ) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = self.clock() + timeout
        last = "no answer"
        while True:
            with self.admin() as admin:
                try:
                    call(admin)
                    return
                except Refused as exc:
                    if not is_passing_refusal(exc.message):
                        raise ChangeFailed(f"{what}: refused: {exc}") from None
                    last = str(exc)
                except (AlreadyExists, NotFound) as exc:
                    # An earlier try whose answer was lost (a failover) may have made it.
                    listed = self._made(admin, done)
                    if listed is not None and done(listed):
                        return
                    raise ChangeFailed(f"{what}: {exc}; members: {listed}") from None
                except Unavailable as exc:
                    last = str(exc)
                except ChatError as exc:
                    raise ChangeFailed(f"{what}: {exc}") from None
            if self.clock() >= deadline:
                raise ChangeFailed(f"{what}: not done within {timeout:.0f}s; last: {last}")
            self.sleep(0.2)

    def _made(self, admin: AdminClient, done: Callable[[Membership], bool]) -> Membership | None:
        """The membership once it shows the change made, or as last seen after a few seconds
        (the replica that answers may not have stored the change yet)."""
        listed = None
        for _ in range(25):
            try:
                listed = admin.list_members()
            except ChatError:
                listed = None
            if listed is not None and done(listed):
                break
            self.sleep(0.2)
        return listed
