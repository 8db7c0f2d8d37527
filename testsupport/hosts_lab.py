"""`sudo make hosts`: three replicas, each on a test host of its own, and a prompt to cut and
heal the network between them while you chat in another terminal (see the README section "Run
it as three hosts and cut the network").

Needs root (network namespaces, nftables). Everything it made is removed when it exits (quit,
Ctrl-D or Ctrl-C). Replica data lives in a temporary directory unless --data-dir is given.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from client import AdminClient, ChatError, ClientSettings, Refused
from client.cli.output import members_table
from protos import chat_pb2, chat_pb2_grpc
from testsupport.harness import ClusterProcesses, ReplicaProcessError
from testsupport.netns import CLIENT, HostsUnavailable, LinkFault, TestHosts, hosts_problem

PORT = 7000
SETTINGS = {"heartbeat_interval_ms": 100, "peer_timeout_ms": 600, "insync_timeout_ms": 1000}

SPARE_HOSTS = 2  # test hosts made for replicas added at the prompt (`add`)

HELP = """commands (replicas are 0, 1, 2; `clients` is this machine's side of the switch):
  status                 each replica's role, epoch and last seq, as the clients see it
  cut A B                drop every packet between A and B (A or B may be `clients`)
  oneway A B             drop A's packets to B only
  flaky A B PERCENT      drop PERCENT% of the packets between A and B, at random
  isolate N              cut N off from the other replicas and the clients
  partition N            cut N off from the other replicas; the clients still reach it
  heal                   remove every fault
  faults                 the switch's drop rules
  kill N | pause N | resume N | start N
                         SIGKILL, SIGSTOP, SIGCONT the replica process, or start it again
  log N                  the last lines of replica N's log
  add                    start a new replica on a spare host (--join) and add it as a learner
  promote N | remove N   make learner N a voter (once caught up) | remove member N for good
  members                the membership, as the primary says it
  quit                   stop everything and remove the hosts"""


class Lab:
    def __init__(self, hosts: TestHosts, cluster: ClusterProcesses, spare: int = 0) -> None:
        """`spare`: test hosts beyond the cluster's, for replicas added at the prompt."""
        self.hosts = hosts
        self.cluster = cluster
        self.spare = spare
        self.admin = AdminClient(
            cluster.addresses, cluster.cluster_secret, ClientSettings(timeout=10)
        )
        self.commands: dict[str, Callable[[list[str]], str]] = {
            "status": self.status,
            "cut": lambda a: self._add(self.hosts.cut(*self._pair(a))),
            "oneway": lambda a: self._add([LinkFault(*self._pair(a))]),
            "flaky": self.flaky,
            "isolate": lambda a: self._add(self.hosts.isolate(self._replica(a))),
            "partition": lambda a: self._add(
                self.hosts.isolate(self._replica(a), from_clients=False)
            ),
            "heal": self.heal,
            "faults": lambda a: self.hosts.fault_rules(),
            "kill": lambda a: self._signal(a, signal.SIGKILL),
            "pause": lambda a: self._signal(a, signal.SIGSTOP),
            "resume": lambda a: self._signal(a, signal.SIGCONT),
            "start": self.start,
            "log": lambda a: self.cluster.log_tail(self._replica(a), 20),
            "add": self.add,
            "promote": self.promote,
            "remove": self.remove,
            "members": lambda a: members_table(self.admin.list_members()),
            "help": lambda a: HELP,
        }

    def _node(self, word: str) -> int:
        if word == "clients":
            return CLIENT
        if word.isdigit() and int(word) < len(self.cluster.specs):
            return int(word)
        raise ValueError(f"no replica {word!r} (0-{len(self.cluster.specs) - 1} or clients)")

    def _replica(self, args: list[str]) -> int:
        if len(args) != 1 or self._node(args[0]) == CLIENT:
            raise ValueError("give one replica index")
        return self._node(args[0])

    def _pair(self, args: list[str]) -> tuple[int, int]:
        if len(args) != 2 or args[0] == args[1]:
            raise ValueError("give two different ends: A B")
        return self._node(args[0]), self._node(args[1])

    def _add(self, faults: list[LinkFault]) -> str:
        self.hosts.set_faults(self.hosts.faults | set(faults))
        return f"{len(self.hosts.faults)} drop rule(s) on the switch"

    def flaky(self, args: list[str]) -> str:
        if len(args) != 3 or not args[2].isdigit() or not 1 <= int(args[2]) <= 100:
            raise ValueError("flaky A B PERCENT (1-100)")
        return self._add(self.hosts.cut(*self._pair(args[:2]), percent=int(args[2])))

    def heal(self, args: list[str]) -> str:
        self.hosts.heal()
        return "healed: no drop rules"

    def _signal(self, args: list[str], sig: signal.Signals) -> str:
        index = self._replica(args)
        if not self.cluster.is_running(index):
            raise ValueError(f"replica {index} is not running (start {index})")
        os.kill(self.cluster.process(index).pid, sig)
        return f"{sig.name} sent to replica {index}"

    def start(self, args: list[str]) -> str:
        index = self._replica(args)
        try:
            self.cluster.start(index, wait=False)
        except ReplicaProcessError as exc:
            raise ValueError(str(exc)) from None
        return f"replica {index} starting"

    def add(self, args: list[str]) -> str:
        if args:
            raise ValueError("add takes no arguments: the next index, on the next spare host")
        index = len(self.cluster.specs)
        if index >= 3 + self.spare:
            raise ValueError(f"no spare test host left ({self.spare} were made)")
        host = self.hosts.address(index)
        self.cluster.add_joiner_at(
            host,
            port=PORT,
            join=[s.address for s in self.cluster.specs],
            launch_prefix=self.hosts.exec_prefix(index),
        )
        spec = self.cluster.specs[index]
        self.cluster.start(index, wait=False)
        give_up = time.monotonic() + 10
        while True:
            try:
                changed = self.admin.add_member(index, spec.address)
                break
            except Refused as exc:  # (a new primary's epoch start not committed yet, ...)
                if time.monotonic() > give_up:
                    return f"replica {index} started, but not added: {exc}"
                time.sleep(0.5)
            except ChatError as exc:
                return f"replica {index} started, but not added: {exc}"
        return (
            f"replica {index} started on {host} and added as a learner (seq {changed.seq}); "
            f"`promote {index}` once `members` shows it caught up"
        )

    def promote(self, args: list[str]) -> str:
        index = self._replica(args)
        try:
            changed = self.admin.promote_member(index)
        except ChatError as exc:
            raise ValueError(str(exc)) from None
        return f"replica {index} promoted to voter (seq {changed.seq})"

    def remove(self, args: list[str]) -> str:
        index = self._replica(args)
        try:
            changed = self.admin.remove_member(index)
        except ChatError as exc:
            raise ValueError(str(exc)) from None
        return f"replica {index} removed (seq {changed.seq}); it stops by itself if running"

    def status(self, args: list[str]) -> str:
        lines = []
        for spec in self.cluster.specs:
            stub = chat_pb2_grpc.ChatStub(self.cluster.channel(spec.index))
            try:
                reply = stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=0.5)
            except grpc.RpcError as exc:
                running = self.cluster.is_running(spec.index)
                state = exc.code().name if running else "not running"
                lines.append(f"  {spec.index} {spec.address:<22} no answer ({state})")
                continue
            me = next(r for r in reply.replicas if r.index == spec.index)
            lines.append(
                f"  {spec.index} {spec.address:<22} {me.role:<9} epoch {me.epoch:<3}"
                f" last seq {me.last_seq}"
            )
        return "\n".join(lines)

    def run(self, line: str) -> str:
        words = shlex.split(line)
        if not words:
            return ""
        command = self.commands.get(words[0])
        if command is None:
            return f"unknown command {words[0]!r}; `help` lists them"
        try:
            return command(words[1:])
        except (ValueError, HostsUnavailable) as exc:
            return f"error: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testsupport.hosts_lab", description=__doc__)
    parser.add_argument("--min-insync", type=int, choices=[1, 2, 3], default=1)
    parser.add_argument("--data-dir", type=Path, help="keep replica data and logs here")
    args = parser.parse_args(argv)
    problem = hosts_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="chat-hosts-"))
    with TestHosts(3 + SPARE_HOSTS) as hosts:
        cluster = ClusterProcesses(
            base,
            3,
            hosts=[hosts.address(i) for i in range(3)],
            ports=[PORT] * 3,
            launch_prefixes=[hosts.exec_prefix(i) for i in range(3)],
            settings={**SETTINGS, "min_insync": args.min_insync},
        )
        with cluster:
            cluster.start_all()
            lab = Lab(hosts, cluster, spare=SPARE_HOSTS)
            servers = ",".join(cluster.addresses)
            print(f"three replicas on their own hosts (min_insync {args.min_insync}):")
            print(lab.status([]))
            print(f"in another terminal:  export CHAT_SERVERS={servers}")
            print("                      .venv/bin/python -m client")
            print(f"logs: {base}/replica-N.log   `help` lists the commands")
            try:
                while True:
                    try:
                        line = input("hosts> ")
                    except EOFError:
                        break
                    if line.strip() in ("quit", "exit"):
                        break
                    output = lab.run(line)
                    if output:
                        print(output, flush=True)
            except KeyboardInterrupt:
                print()
            lab.admin.close()
            for spec in cluster.specs:  # a paused process would outlive its SIGKILL's wait
                if cluster.is_running(spec.index):
                    os.kill(cluster.process(spec.index).pid, signal.SIGCONT)
    print("stopped the replicas and removed the hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
