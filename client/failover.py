"""Finding the primary and retrying one request across replicas until a deadline.

A request goes first to the replica that answered last. When a replica is down (UNAVAILABLE,
or silent past the per-attempt timeout) or is not the primary (FAILED_PRECONDITION, unless the
service says it refuses the request by its rules: see `retryable`), the same
request -- same request_id, so the server applies it at most once -- goes next to the primary
that replica named in its `chat-primary-address` trailer, else to the one its ClusterStatus
names, else to the next address in the list. A unary call that gets no answer for a while
checks that its replica still answers at all (a frozen process does not, and its own timeout
would be seconds away); if not, the call moves on at once and that replica is skipped until it
answers again. Once every address failed in a round, the client
sleeps a short, growing backoff and starts another round, until the deadline passes -- or at
once, with what to change, when every replica failed twice running as a TLS mismatch (a
plaintext client and TLS replicas, or the other way round, or a CA that does not fit).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from client.channels import AdminStub, ChannelPool, ChatStub, security_mismatch
from client.errors import REFUSED, ChatError, ChatUnavailableError, service_error, trailers
from protos import chat_pb2
from protos.wire import PRIMARY_ADDRESS_KEY, SERVICE_ERROR_KEY

logger = logging.getLogger(__name__)


# Rounds in which every replica failed as a TLS mismatch before the client gives up early:
# a mismatch does not go away by waiting, but a connection closed once may be a coincidence.
MISMATCH_ROUNDS = 2

# Worth another replica (or another try): the replica is down, is not the primary, did not
# answer in time, or dropped the call while shutting down.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)

Result = TypeVar("Result")
Attempt = Callable[[ChatStub, float], Result]
AdminAttempt = Callable[[AdminStub, float], Result]


def retryable(error: grpc.RpcError) -> bool:
    """Whether the same request may succeed elsewhere or later: a RETRYABLE_CODES status, but
    not a FAILED_PRECONDITION the service marks as a refusal by its own rules (a membership
    change while another is in progress, ...). Any replica would refuse it alike, and
    retrying until the deadline would hide the reason behind "no primary found"."""
    if error.code() not in RETRYABLE_CODES:
        return False
    return not (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and service_error(error) == REFUSED
    )


@dataclass(frozen=True)
class Liveness:
    """How a unary call notices a replica that stopped answering (a frozen process, found by no
    timeout of its own): after `check_after` seconds without an answer, and every as long
    again, the client asks the replica for its ClusterStatus; if that takes longer than
    `probe_timeout`, the call is abandoned there and the request (same request_id) goes on to
    the other replicas, the silent one being tried last for a while (`suspect_for`)."""

    check_after: float = 0.4
    probe_timeout: float = 0.3
    suspect_for: float = 3.0


class _Watch:
    """One blocking call under the watchdog's eye."""

    __slots__ = ("abandoned", "address", "next_check", "stub")

    def __init__(self, address: str, stub: ChatStub, next_check: float) -> None:
        self.address = address
        self.stub = stub
        self.next_check = next_check
        self.abandoned = False


class _Watchdog:
    """Checks on blocking unary calls that have waited `check_after` seconds: one thread per
    client, started with its first call, waking at most every `check_after` while idle (a
    call only registers; nothing is woken for it). A replica that does not answer the check
    within `probe_timeout` has its calls abandoned: marked, and their channel closed under
    them, which ends them at once. (A blocking call cannot be cancelled on its own; a
    future can, but costs a thread hand-off per call -- gRPC spins a thread per channel while
    a future is outstanding -- about 0.2 ms of CPU per send.)"""

    def __init__(
        self,
        liveness: Liveness,
        answers: Callable[[str, ChatStub], bool],
        abandon: Callable[[str, ChatStub], None],
    ) -> None:
        self._liveness = liveness
        self._answers = answers
        self._abandon = abandon
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        # Stubs whose channel was given up (closed, or being closed); weak: a stub goes when
        # no call holds it any more.
        self._given_up: weakref.WeakSet[ChatStub] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def watching(self, address: str, stub: ChatStub) -> Iterator[_Watch]:
        watch = _Watch(address, stub, time.monotonic() + self._liveness.check_after)
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="chat-client-liveness", daemon=True
                )
                self._thread.start()
            # A call on a channel just given up ends at once, as those on it did.
            watch.abandoned = stub in self._given_up
            self._watches.add(watch)
        try:
            if watch.abandoned:
                raise _Unresponsive(address)
            yield watch
        finally:
            with self._cond:
                self._watches.discard(watch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [w for w in self._watches if w.next_check <= now and not w.abandoned]
                if not due:
                    soonest = min((w.next_check for w in self._watches), default=math.inf)
                    self._cond.wait(min(self._liveness.check_after, max(0.0, soonest - now)))
                    continue
                for watch in due:
                    watch.next_check = now + self._liveness.check_after
                stubs = {id(w.stub): (w.address, w.stub) for w in due}
            for address, stub in stubs.values():
                if self._answers(address, stub):
                    continue
                with self._cond:
                    self._given_up.add(stub)
                    for watch in self._watches:
                        if watch.stub is stub:
                            watch.abandoned = True
                self._abandon(address, stub)


class _Unresponsive(grpc.RpcError):
    """An attempt abandoned because its replica stopped answering (handled as a timeout)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self._address = address

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return f"replica at {self._address} stopped answering"

    def trailing_metadata(self) -> tuple[()]:
        return ()


@dataclass(frozen=True)
class Backoff:
    """Pause between rounds: `initial` seconds, times `multiplier` each round, at most `maximum`."""

    initial: float = 0.05
    maximum: float = 0.2
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.multiplier, self.maximum)


@dataclass
class Retries:
    """What one call's attempts have learnt so far, across its rounds over the replicas (the
    bookkeeping Failover and the asyncio client's twin share)."""

    round_start: str  # where the next round starts: the last primary named, else the first tried
    tried: set[str] = field(default_factory=set)  # in this round
    attempts: int = 0
    saw_not_primary: bool = False
    refusal: str | None = None  # the service's own last reason for refusing
    # What to change about TLS, by address, while that address's latest failure says so.
    mismatches: dict[str, str] = field(default_factory=dict)
    mismatch_rounds: int = 0  # rounds running in which every replica failed as a mismatch
    told: bool = False  # the caller heard that no replica answers
    answered_this_round: bool = False
    named: str | None = None  # the primary a replica named last
    unreached: set[str] = field(default_factory=set)  # failed to connect to, in this call
    renewed: set[str] = field(default_factory=set)  # given a fresh channel, in this call
    revisited: set[str] = field(default_factory=set)  # tried again this round, being named

    def follows(self, hint: str) -> bool:
        """Whether to go where a replica's answer names the primary: yes if not tried this
        round; if tried, once more per round -- an election may have ended since it said
        "not the primary" (a replica that waited for the election names its winner, often
        one asked a moment before). Once, so that replicas naming each other from stale
        views cannot keep a round going."""
        if hint not in self.tried:
            return True
        if hint in self.revisited:
            return False
        self.revisited.add(hint)
        return True

    def try_afresh(self, address: str) -> bool:
        """Whether to try `address` again at once, on a fresh channel: a replica names it the
        primary, yet this call failed to connect to it. A channel that failed to connect to a
        replica while it was down goes on failing calls at once with that old error until
        its reconnect backoff (up to a second) runs out -- though the replica is back and
        has just been elected. Once per address and call: a primary named but really down
        (a stale name) fails again at once, and the call goes on as before."""
        if address != self.named or address not in self.unreached or address in self.renewed:
            return False
        self.renewed.add(address)
        return True

    def failed(self, error: grpc.RpcError, address: str, *, uses_tls: bool) -> None:
        """Note a retryable failure of the attempt on `address`."""
        logger.debug("%s answered %s: %s", address, error.code().name, error.details())
        self.saw_not_primary |= error.code() == grpc.StatusCode.FAILED_PRECONDITION
        # A replica that answered, even to refuse: not "no replica answers".
        self.answered_this_round |= (
            error.code() == grpc.StatusCode.FAILED_PRECONDITION or _from_service(error)
        )
        if error.code() == grpc.StatusCode.UNAVAILABLE and _from_service(error):
            self.refusal = f"{error.details()} (replica at {address})"
        elif error.code() == grpc.StatusCode.UNAVAILABLE:
            self.unreached.add(address)
        mismatch = security_mismatch(error, address, uses_tls=uses_tls)
        if mismatch is None:
            self.mismatches.pop(address, None)
        else:
            self.mismatches[address] = mismatch
            self.answered_this_round = True

    def give_up(self, addresses: Sequence[str]) -> ChatUnavailableError:
        # (A copy: a SessionStream's caller may ask while its reader's attempts go on.)
        return give_up(addresses, self.saw_not_primary, self.refusal, dict(self.mismatches))

    def end_round(self, remaining: float, addresses: Sequence[str]) -> bool:
        """Every replica failed this round. Raises the give-up error once the deadline passed
        or every replica keeps failing as a TLS mismatch; else True if the caller is now to
        be told that no replica answers (once per call)."""
        self.mismatch_rounds = (
            self.mismatch_rounds + 1 if self.tried.issubset(self.mismatches) else 0
        )
        if remaining <= 0 or self.mismatch_rounds >= MISMATCH_ROUNDS:
            raise self.give_up(addresses)
        tell = not self.told and not self.answered_this_round
        self.told |= tell
        return tell

    def next_round(self) -> None:
        self.tried.clear()
        self.revisited.clear()
        self.answered_this_round = False


class Failover:
    """Routes requests to the primary among `addresses`; safe to share between threads."""

    def __init__(
        self,
        addresses: Sequence[str],
        pool: ChannelPool,
        *,
        timeout: float,
        attempt_timeout: float,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        on_replica_change: Callable[[str], None] | None = None,
        liveness: Liveness | None = None,
        on_unreachable: Callable[[str], None] | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one replica address is needed")
        self.addresses: tuple[str, ...] = tuple(addresses)
        self._pool = pool
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._backoff = backoff
        self._clock = clock
        self._closed = threading.Event()
        # Closing the client interrupts a backoff pause instead of waiting it out.
        self._sleep = sleep if sleep is not None else self._closed.wait
        self._on_replica_change = on_replica_change
        # Told once per call, after its first round in which no replica answered at all.
        self._on_unreachable = on_unreachable
        self._lock = threading.Lock()
        self._preferred = self.addresses[0]
        self._connected: str | None = None
        self._liveness = liveness if liveness is not None else Liveness()
        self._suspect_until: dict[str, float] = {}  # address -> until when it is tried last
        self._watchdog = _Watchdog(self._liveness, self._answers, self._abandoned)

    @property
    def connected_address(self) -> str | None:
        """The replica that answered the last successful request (None before the first)."""
        with self._lock:
            return self._connected

    def close(self) -> None:
        self._closed.set()
        self._watchdog.close()

    def pause(self, seconds: float) -> None:
        self._sleep(seconds)

    def call(
        self,
        attempt: Attempt[Result],
        *,
        timeout: float | None = None,
        retries: Retries | None = None,
    ) -> Result:
        """Run `attempt(stub, attempt_timeout)` against replicas until one succeeds.

        Raises ChatError at once for a domain error, ChatUnavailableError once `timeout`
        (default: the client's) has passed without an answer from the primary. `retries`: a
        fresh Retries to keep what the attempts learn in, for a caller that may have to say
        why meanwhile (the give-up error's wording).
        """
        return self._retrying(
            lambda address, t: attempt(self._pool.stub(address), t),
            timeout=timeout,
            retries=retries,
        )

    def call_unary(self, invoke: Attempt[Result], *, timeout: float | None = None) -> Result:
        """Like call(), for a blocking unary call (`stub.Method(request, timeout=t)`): an
        attempt on a replica that stops answering is abandoned early (see Liveness; the
        watchdog thread checks on calls that have waited long enough)."""
        return self._retrying(lambda address, t: self._watched(invoke, address, t), timeout=timeout)

    def call_admin(self, invoke: AdminAttempt[Result], *, timeout: float | None = None) -> Result:
        """call_unary() for the Admin service (`stub.Method(request, timeout=t, metadata=...)`
        on its stub): the same channels, watchdog, primary hints and retries as Chat's calls,
        since a membership change goes to the primary just as a send does."""

        def attempt(address: str, timeout: float) -> Result:
            # The watchdog watches (and may close) the channel through its Chat stub; the Admin
            # stub is on the same channel -- unless it was replaced between the two look-ups,
            # and then this try ends by its own timeout only.
            return self._watched(
                lambda _chat, t: invoke(self._pool.admin_stub(address), t), address, timeout
            )

        return self._retrying(attempt, timeout=timeout)

    def _watched(self, invoke: Attempt[Result], address: str, timeout: float) -> Result:
        stub = self._pool.stub(address)
        with self._watchdog.watching(address, stub) as watch:
            try:
                return invoke(stub, timeout)
            except (grpc.RpcError, ValueError):
                # Abandoned: the watchdog closed the channel under the call (a closed
                # channel's calls end CANCELLED, or raise ValueError when started on it).
                if watch.abandoned:
                    raise _Unresponsive(address) from None
                raise

    def follow(self, error: grpc.RpcError, address: str | None = None) -> None:
        """A call outside call() (a stream), on `address`, ended with `error`: if it names the
        primary ("not the primary" with a trailer), the next call starts there; if the
        replica itself failed (a broken connection, not its answer), at the replica after it,
        as that call's own next attempt would have."""
        named = primary_named_by(error)
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION and named is not None:
            with self._lock:
                self._preferred = named
            return
        if address is None or _from_service(error):
            return
        after = self._next_untried(address, {address})
        with self._lock:
            if after is not None and self._preferred == address:
                self._preferred = after

    def answers(self, address: str) -> bool:
        """Whether the replica at `address` still answers at all (a ClusterStatus within the
        liveness probe's timeout)."""
        return self._answers(address)

    def abandon(self, address: str) -> None:
        """Give up on `address` as the watchdog does on a silent replica: tried last for a
        while, and its channel closed under every call on it (a stream included)."""
        self._abandoned(address, self._pool.stub(address))

    def _answers(self, address: str, stub: ChatStub | None = None) -> bool:
        stub = self._pool.stub(address) if stub is None else stub
        try:
            stub.ClusterStatus(
                chat_pb2.ClusterStatusRequest(), timeout=self._liveness.probe_timeout
            )
        except grpc.RpcError as error:
            return error.code() not in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            )
        except ValueError:  # its channel was closed meanwhile (the client, or the watchdog)
            return True
        return True

    def _abandoned(self, address: str, stub: ChatStub) -> None:
        """The watchdog gave up on `address`: try it last for a while, and close the channel
        the abandoned calls wait on (the pool opens a new one for the next call)."""
        with self._lock:
            self._suspect_until[address] = self._clock() + self._liveness.suspect_for
        self._pool.discard(address, stub)

    def _recheck_suspects(self) -> bool:
        """Ask each replica that stopped answering lately whether it answers again (it may
        only have been slow, and still be the primary the others name); whether there were
        any (their checks took the place of the pause between rounds)."""
        suspects = [a for a in self.addresses if self._suspect(a)]
        for address in suspects:
            if self._answers(address):
                with self._lock:
                    self._suspect_until.pop(address, None)
        return bool(suspects)

    def _suspect(self, address: str) -> bool:
        with self._lock:
            until = self._suspect_until.get(address)
            if until is not None and until <= self._clock():
                del self._suspect_until[address]
                return False
            return until is not None

    def _retrying(
        self,
        run: Callable[[str, float], Result],
        *,
        timeout: float | None = None,
        retries: Retries | None = None,
    ) -> Result:
        deadline = self._clock() + (self._timeout if timeout is None else timeout)
        delays = self._backoff.delays()
        with self._lock:
            address = self._preferred
        if self._suspect(address):
            address = self._next_untried(address, {address}) or address
        call = Retries(round_start=address) if retries is None else retries
        call.round_start = address
        while True:
            if self._closed.is_set():
                raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
            remaining = deadline - self._clock()
            if remaining <= 0 and call.attempts > 0:
                raise call.give_up(self.addresses)
            call.tried.add(address)
            call.attempts += 1
            stub = self._pool.stub(address)
            try:
                result = run(address, min(remaining, self._attempt_timeout))
            except grpc.RpcError as error:
                if not retryable(error):
                    raise ChatError.from_rpc_error(error) from None
                call.failed(error, address, uses_tls=self._pool.uses_tls)
                hint = self._primary_hint(error, address, remaining)
            else:
                self._record_success(address, announce=call.told)
                return result
            if hint is not None:
                call.round_start = call.named = hint
            afresh = call.named if hint is not None else address
            if afresh is not None and not self._suspect(afresh) and call.try_afresh(afresh):
                logger.debug("trying the named primary %s again on a fresh channel", afresh)
                self._pool.renew(afresh, stub if afresh == address else self._pool.stub(afresh))
                address = afresh
                continue
            usable_hint = hint is not None and not self._suspect(hint) and call.follows(hint)
            following = hint if usable_hint else None
            address = (
                following
                or self._next_untried(address, call.tried)
                or self._next_round(call, deadline, delays)
            )

    def _next_round(self, call: Retries, deadline: float, delays: Iterator[float]) -> str:
        """Every replica failed this round: give up, or pause and say where the next round
        starts."""
        remaining = deadline - self._clock()
        if call.end_round(remaining, self.addresses):
            self._tell_unreachable(remaining)
        if not self._recheck_suspects():
            self._sleep(min(next(delays), remaining))
        call.next_round()
        if self._suspect(call.round_start):
            return self._next_untried(call.round_start, {call.round_start}) or call.round_start
        return call.round_start

    def _tell_unreachable(self, remaining: float) -> None:
        if self._on_unreachable is None:
            return
        how_long = "" if remaining == math.inf else f" for up to {max(1, round(remaining))} s"
        self._on_unreachable(
            f"no replica answers at {', '.join(self.addresses)}; still trying" + how_long
        )

    def _primary_hint(self, error: grpc.RpcError, address: str, remaining: float) -> str | None:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return None
        named = primary_named_by(error)
        return named if named is not None else self._primary_from_cluster_status(address, remaining)

    def _primary_from_cluster_status(self, address: str, remaining: float) -> str | None:
        stub = self._pool.stub(address)
        try:
            status = stub.ClusterStatus(
                chat_pb2.ClusterStatusRequest(),
                timeout=max(0.0, min(remaining, self._attempt_timeout)),
            )
        except grpc.RpcError as error:
            logger.debug("ClusterStatus at %s failed: %s", address, error.code().name)
            return None
        return primary_address_in(status)

    def _next_untried(self, after: str, tried: set[str]) -> str | None:
        """The next address after `after` not tried yet, skipping those that stopped answering
        lately (unless every replica did)."""
        start = self.addresses.index(after) + 1 if after in self.addresses else 0
        order = [
            self.addresses[(start + i) % len(self.addresses)] for i in range(len(self.addresses))
        ]
        untried = [a for a in order if a not in tried]
        fallback = untried[0] if untried and all(map(self._suspect, self.addresses)) else None
        return next((a for a in untried if not self._suspect(a)), fallback)

    def _record_success(self, address: str, *, announce: bool = False) -> None:
        """`announce`: say so even if it is the same replica (it was unreachable a moment ago)."""
        with self._lock:
            self._suspect_until.pop(address, None)
            self._preferred = address
            changed = address != self._connected
            self._connected = address
        if changed or announce:
            logger.info("connected to replica at %s", address)
            if self._on_replica_change is not None:
                self._on_replica_change(address)


def give_up(
    addresses: Sequence[str], saw_not_primary: bool, refusal: str | None, mismatches: dict[str, str]
) -> ChatUnavailableError:
    """The error a call ends with at its deadline: the service's own last reason, a TLS
    mismatch, or which of "no primary" and "no replica" it was."""
    listed = ", ".join(addresses)
    if refusal is not None:
        message = refusal
    elif mismatches:
        message = next(iter(mismatches.values()))
    elif saw_not_primary:
        message = f"no primary found among {listed}"
    else:
        message = f"no replica reachable at {listed}"
    return ChatUnavailableError(grpc.StatusCode.UNAVAILABLE, message)


def primary_named_by(error: grpc.RpcError) -> str | None:
    """The primary's address a replica's "not primary" answer names, if it does."""
    for key, value in trailers(error):
        if key == PRIMARY_ADDRESS_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def primary_address_in(status: chat_pb2.ClusterStatusReply) -> str | None:
    if not status.primary_known:
        return None
    for replica in status.replicas:
        if replica.index == status.primary_index and replica.address:
            return str(replica.address)
    return None


def _from_service(error: grpc.RpcError) -> bool:
    """Whether the status is the service's own answer rather than a transport failure."""
    return any(key == SERVICE_ERROR_KEY for key, _ in trailers(error))


from_service = _from_service
