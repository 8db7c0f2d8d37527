"""The inbox notifier wakes subscriptions of accounts that got a committed message, and holds
state only for accounts with a subscription."""

from __future__ import annotations

import datetime as dt
import threading

from eventlog import Event
from projections import EventTypes
from replica.notifier import InboxNotifier

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
