"""Where each replica is reached, by index: the cluster config's replicas to begin with (or,
for a replica that joined without a config, what the cluster told it), then the members of
every membership event in the log (each carries the whole membership with its addresses).
The storage side updates it whenever the membership it tells the core changes; the peers'
channels, the primary's address told to clients and the cluster status read it. Any thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from replica.config import ReplicaAddress


class AddressBook:
    def __init__(self, replicas: Iterable[ReplicaAddress]) -> None:
        self._lock = threading.Lock()
        self._known: dict[int, ReplicaAddress] = {r.index: r for r in replicas}
        self._members: tuple[int, ...] = tuple(sorted(self._known))
        self._listeners: list[Callable[[], None]] = []

    def get(self, index: int) -> ReplicaAddress | None:
        """Where replica `index` is (also a replica removed since: never reused)."""
        with self._lock:
            return self._known.get(index)

    def members(self) -> tuple[ReplicaAddress, ...]:
        """The current members (voters and learners), in index order."""
        with self._lock:
            return tuple(self._known[i] for i in self._members)

    def set_members(self, members: Iterable[ReplicaAddress]) -> None:
        """The membership changed: these are the members now (an address already known for
        an index is replaced: a replica may be added again at another place only under a new
        index, so this happens only when an operator's config and the log disagree)."""
        members = tuple(members)
        with self._lock:
            for member in members:
                self._known[member.index] = member
            changed = tuple(sorted(m.index for m in members)) != self._members
            self._members = tuple(sorted(m.index for m in members))
            listeners = list(self._listeners) if changed else []
        for listener in listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    @property
    def client_addresses(self) -> Mapping[int, str]:
        """Each replica's client address (for a client sent to the primary)."""
        return _ClientAddresses(self)


class _ClientAddresses(Mapping[int, str]):
    def __init__(self, book: AddressBook) -> None:
        self._book = book

    def __getitem__(self, index: int) -> str:
        found = self._book.get(index)
        if found is None:
            raise KeyError(index)
        return found.address

    def __iter__(self) -> Iterator[int]:
        return iter([m.index for m in self._book.members()])

    def __len__(self) -> int:
        return len(self._book.members())
