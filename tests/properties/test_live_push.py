"""A caught-up subscription pushes new messages from the notifier instead of querying its inbox
(replica/chat/servicer.py next_page, replica/storage/notifier.py live_after). The invariant:
whatever the interleaving of commits, listener calls (late, lost, in one batch or several), acks,
step-downs and buffer overflows, each subscription yields every committed, unacknowledged message of
its account exactly once, in seq order, and nothing else -- the same as one that always queried.

The state machine drives the real notifier and the real next_page; the inbox they fall back
to is a model of the committed log (what the projections would answer)."""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from eventlog import Event
from projections import EventTypes
from projections.queries import StoredMessage
from replica.chat.servicer import next_page
from replica.storage.notifier import InboxNotifier

ME, OTHER = 7, 8
PAGE = 3
T0 = dt.datetime(2030, 1, 1)


def _sent(seq: int, recipient: int) -> Event:
    payload = {
        "sender_id": 1,
        "sender": "a",
        "recipient_id": recipient,
        "recipient": f"u{recipient}",
        "body": f"m{seq}",
    }
    return Event(seq, 1, EventTypes.MESSAGE_SENT, payload, None, T0 + dt.timedelta(seconds=seq))


def _acked(seq: int, account: int, ids: list[int]) -> Event:
    payload = {"account_id": account, "message_ids": ids}
    return Event(seq, 1, EventTypes.MESSAGES_ACKED, payload, None, T0)


class _Log:
    """The committed log as the projections see it: the inbox queries' answers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.committed = 0

    def committed_seq(self) -> int:
        return self.committed

    def acked(self) -> set[int]:
        return {
            int(i)
            for e in self.events[: self.committed]
            if e.type == EventTypes.MESSAGES_ACKED
            for i in e.payload["message_ids"]
        }

    def inbox(self) -> list[Event]:
        """Committed, unacknowledged messages to ME."""
        acked = self.acked()
        return [
            e
            for e in self.events[: self.committed]
            if e.type == EventTypes.MESSAGE_SENT
            and e.payload["recipient_id"] == ME
            and e.seq not in acked
        ]

    def undelivered_through(
        self, account_id: int, after_id: int, limit: int
    ) -> tuple[list[StoredMessage], int]:
        assert account_id == ME
        found = [
            StoredMessage(e.seq, "a", f"u{ME}", e.payload["body"], e.created_at, False)
            for e in self.inbox()
            if e.seq > after_id
        ]
        return found[:limit], self.committed


@dataclass
class _Subscription:
    last_id: int = 0
    seen_through: int = 0
    caught_up: bool = False
    yielded: list[int] = field(default_factory=list)


class LivePush(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = _Log()
        self.notifier = InboxNotifier(live_messages=4, live_bytes=40)
        self.given = 0  # events up to this seq were offered to the listener (or lost)
        self.watches = ExitStack()
        self.subs: list[_Subscription] = []
        self.start_subscription()

    def _next_seq(self) -> int:
        return len(self.log.events) + 1

    # -- the log -----------------------------------------------------------------------

    @rule(to_me=st.booleans())
    def append_send(self, to_me: bool) -> None:
        self.log.events.append(_sent(self._next_seq(), ME if to_me else OTHER))

    @rule(data=st.data())
    def append_ack(self, data: st.DataObject) -> None:
        """My client acknowledges some of the messages one of my subscriptions yielded."""
        shown = sorted({i for s in self.subs for i in s.yielded} - self.log.acked())
        if shown:
            ids = data.draw(st.lists(st.sampled_from(shown), min_size=1, unique=True))
            self.log.events.append(_acked(self._next_seq(), ME, ids))

    @rule(n=st.integers(1, 4))
    def commit(self, n: int) -> None:
        """The commit point moves (the listener is told afterwards, outside the lock)."""
        self.log.committed = min(len(self.log.events), self.log.committed + n)

    @precondition(lambda self: self.given < self.log.committed)
    @rule(split=st.booleans())
    def tell_listener(self, split: bool) -> None:
        through = self.log.committed
        if split and through - self.given > 1:
            through = self.given + 1
        self.notifier.on_committed(self.log.events[self.given : through])
        self.given = through

    @precondition(lambda self: self.given < self.log.committed)
    @rule()
    def lose_listener_call(self) -> None:
        """Committed events the listener never sees (e.g. a new tenure's inherited tail)."""
        self.given = self.log.committed

    @rule()
    def step_down(self) -> None:
        self.notifier.wake_all()

    # -- subscriptions -------------------------------------------------------------------

    @precondition(lambda self: len(self.subs) < 3)
    @rule()
    def start_subscription(self) -> None:
        self.watches.enter_context(self.notifier.watching(ME))
        self.subs.append(_Subscription())

    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        """One turn of a subscription's loop (woken, or its recheck interval passed)."""
        sub = data.draw(st.sampled_from(self.subs))
        self._poll(sub)

    def _poll(self, sub: _Subscription) -> int:
        batch, through = next_page(
            self.log,
            self.notifier,
            ME,
            sub.last_id,
            sub.seen_through,
            PAGE,
            live=sub.caught_up,
        )
        acked = self.log.acked()
        committed = {e.seq: e for e in self.log.inbox()}
        for m in batch:
            assert m.message_id > sub.last_id, "yielded twice or out of order"
            assert m.message_id not in acked, "an acknowledged message yielded"
            event = committed.get(m.message_id)
            assert event is not None, "not a committed message of this account"
            assert m.body == event.payload["body"] and m.sent_at == event.created_at
            sub.yielded.append(m.message_id)
            sub.last_id = m.message_id
        sub.seen_through = max(sub.seen_through, through)
        if len(batch) < PAGE:
            sub.caught_up = True
        return len(batch)

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        self._drained(data.draw(st.sampled_from(self.subs)))

    def _drained(self, sub: _Subscription) -> None:
        """Once a subscription has polled until a page comes back empty, it has yielded every
        committed, unacknowledged message (polling as the real loop does, not a query)."""
        for _ in range(200):
            if self._poll(sub) == 0:
                break
        missing = {e.seq for e in self.log.inbox()} - set(sub.yielded)
        assert not missing, f"never yielded: {sorted(missing)}"

    def teardown(self) -> None:
        try:
            for sub in self.subs:
                self._drained(sub)
        finally:
            self.watches.close()


TestLivePush = LivePush.TestCase
TestLivePush.settings = settings(max_examples=1000, stateful_step_count=30, deadline=None)
