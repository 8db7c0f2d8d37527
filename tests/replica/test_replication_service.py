"""The replication servicer's wait for its executor's decision."""

from __future__ import annotations

from concurrent.futures import Future

from replica.replication.service import DEFAULT_WAIT, wait_for


def test_a_call_without_a_deadline_waits_a_bounded_time() -> None:
    """A Replicate stream has no deadline: gRPC reports ~1.8e19 s remaining, which a lock's
    timeout cannot take (OverflowError: timestamp out of range for platform time_t -- a
    traceback in a primary's log when its database fails mid-stream)."""
    endless = 1.8446744073709552e19
    assert wait_for(endless) == DEFAULT_WAIT
    done: Future[int] = Future()
    done.set_result(7)
    assert done.result(wait_for(endless)) == 7


def test_a_call_with_a_deadline_waits_no_longer_than_it() -> None:
    assert wait_for(0.25) == 0.25
    assert wait_for(None) == DEFAULT_WAIT
