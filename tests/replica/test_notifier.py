"""The inbox notifier wakes subscriptions of accounts that got a committed message, and holds
state only for accounts with a subscription."""

from __future__ import annotations

import datetime as dt
import threading

from eventlog import Event
from projections import EventTypes
from replica.storage.notifier import InboxNotifier

T0 = dt.datetime(2030, 1, 1)


def sent_to(seq: int, recipient_id: int) -> Event:
    payload = {"sender_id": 1, "sender": "a", "recipient_id": recipient_id, "recipient": "b"}
    return Event(seq, 1, EventTypes.MESSAGE_SENT, {**payload, "body": "x"}, None, T0)


def test_a_watched_account_is_woken_by_its_message() -> None:
    notifier = InboxNotifier()
    with notifier.watching(7):
        seen = notifier.version(7)
        woke: list[int] = []
        waiter = threading.Thread(target=lambda: woke.append(notifier.wait(7, seen, 10)))
        waiter.start()
        notifier.on_committed([sent_to(5, 7)])
        waiter.join(10)
        assert woke and woke[0] != seen


def test_a_message_between_reading_the_version_and_waiting_is_not_missed() -> None:
    notifier = InboxNotifier()
    with notifier.watching(7):
        seen = notifier.version(7)
        notifier.on_committed([sent_to(5, 7)])  # before the subscriber waits
        assert notifier.wait(7, seen, 10) != seen  # at once, not after the timeout


def test_no_state_is_kept_for_accounts_without_a_subscription() -> None:
    notifier = InboxNotifier()
    for seq in range(1, 10_001):
        notifier.on_committed([sent_to(seq, 1000 + seq)])
    with notifier.watching(3), notifier.watching(3):
        notifier.on_committed([sent_to(10_001, 3)])
        assert notifier.tracked_accounts() == 1
    assert notifier.tracked_accounts() == 0


def acked(seq: int, account_id: int, ids: list[int]) -> Event:
    payload = {"account_id": account_id, "message_ids": ids}
    return Event(seq, 1, EventTypes.MESSAGES_ACKED, payload, None, T0)


def test_a_committed_message_is_handed_over_without_a_query() -> None:
    notifier = InboxNotifier()
    notifier.on_committed([sent_to(1, 9)])
    with notifier.watching(7):
        notifier.on_committed([sent_to(2, 7), sent_to(3, 8), sent_to(4, 7)])
        found = notifier.live_after(7, 1, committed_seq=4)
        assert found is not None
        assert [m.message_id for m in found[0]] == [2, 4] and found[1] == 4
        assert notifier.live_after(7, 2, committed_seq=4) == (found[0][1:], 4)


def test_events_the_notifier_was_not_given_make_it_refuse() -> None:
    notifier = InboxNotifier()
    notifier.on_committed([sent_to(1, 9)])
    with notifier.watching(7):
        # seq 2 (a message to 7) committed, but the listener never saw it: a gap.
        assert notifier.live_after(7, 1, committed_seq=2) is None
        notifier.on_committed([sent_to(3, 7)])
        assert notifier.live_after(7, 1, committed_seq=3) is None  # it cannot cover 2
        assert notifier.live_after(7, 2, committed_seq=3) is not None  # a query read 2


def test_an_acknowledged_message_is_not_handed_to_another_subscription() -> None:
    notifier = InboxNotifier()
    notifier.on_committed([sent_to(1, 9)])
    with notifier.watching(7), notifier.watching(7):
        notifier.on_committed([sent_to(2, 7), sent_to(3, 7)])
        notifier.on_committed([acked(4, 7, [2])])  # the first subscription's client acked 2
        found = notifier.live_after(7, 1, committed_seq=4)
        assert found is not None and [m.message_id for m in found[0]] == [3]


def test_a_full_buffer_and_a_step_down_narrow_what_it_covers() -> None:
    notifier = InboxNotifier(live_messages=2)
    notifier.on_committed([sent_to(1, 9)])
    with notifier.watching(7):
        notifier.on_committed([sent_to(2, 7), sent_to(3, 7), sent_to(4, 7)])
        assert notifier.live_after(7, 1, committed_seq=4) is None  # 2 was dropped
        found = notifier.live_after(7, 2, committed_seq=4)
        assert found is not None and [m.message_id for m in found[0]] == [3, 4]
        notifier.wake_all()
        assert notifier.live_after(7, 4, committed_seq=4) is None
