"""Known-wrong changes to the protocol core and to the shell around it (the executor, its
ports, the commit tracker, the writer): each one a plausible bug that the model and the fast
unit tests must catch (`make mutants`). A mutant is a set of exact text replacements; each
`old` must occur exactly once, so a catalog that no longer matches the code fails loudly
instead of testing nothing. `shell` marks the mutants outside replica/protocol/;
`beyond_model` those in code the model does not run (tests/replica/protocol/sim.py drives the
core, the executor and its ports over simulated storage and peers: not the storage worker's
transactions, the writer, the peers' calls, the gRPC streams, the node's wiring): only the unit
tests can catch them, and they do not count in the share the model alone must catch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CORE = "replica/protocol/core.py"
IN_SYNC = "replica/protocol/in_sync.py"
RULES = "replica/protocol/rules.py"
EXECUTOR = "replica/replication/executor.py"
COMMIT = "replica/storage/commit.py"
PORTS = "replica/replication/ports.py"
PEERS = "replica/replication/peers.py"
STORAGE = "replica/replication/storage_worker.py"
WRITER = "replica/storage/writer.py"
WATCH = "replica/storage/watch.py"
SECONDARY = "replica/replication/secondary.py"
# Outside replica/protocol/, the code tests/replica/protocol/sim.py runs for real.
MODEL_RUNS = frozenset({EXECUTOR, PORTS, COMMIT, WATCH, "replica/storage/role.py"})
MEMBERSHIP = "replica/protocol/membership.py"
NODE = "replica/server/node.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str
    replacements: tuple[tuple[str, str, str], ...]  # (file, old, new)

    @property
    def shell(self) -> bool:
        return not all(file.startswith("replica/protocol/") for file, _, _ in self.replacements)

    @property
    def beyond_model(self) -> bool:
        return not any(
            file.startswith("replica/protocol/") or file in MODEL_RUNS
            for file, _, _ in self.replacements
        )

    def apply(self, root: Path) -> dict[str, str]:
        """The mutated text of each file it changes under `root`. ValueError if a replacement
        does not occur exactly once or a mutated file no longer compiles (the catalog no
        longer matches the code)."""
        mutated: dict[str, str] = {}
        for file, old, new in self.replacements:
            text = mutated.get(file, (root / file).read_text())
            if old == new or text.count(old) != 1:
                raise ValueError(
                    f"mutant {self.name}: the text to replace occurs {text.count(old)} times "
                    f"in {file} (the catalog no longer matches the code)"
                )
            mutated[file] = text.replace(old, new)
        for file, text in mutated.items():
            try:
                compile(text, file, "exec")
            except SyntaxError as exc:
                raise ValueError(f"mutant {self.name}: {file} no longer compiles ({exc})") from exc
        return mutated


MUTANTS = (
    Mutant(
        "vote-for-older-log",
        "a vote is granted to a less up-to-date log",
        (
            (
                CORE,
                "        if rules.less_up_to_date(event.position, mine):",
                "        if False:",
            ),
        ),
    ),
    Mutant(
        "remove-without-telling",
        "a lagging secondary is removed from the in-sync set without being told first",
        (
            (
                IN_SYNC,
                "                m.leaving_since = now  # told now; removed when it confirms",
                '                self._remove(m, "behind", out)',
            ),
        ),
    ),
    Mutant(
        "silent-stream-keeps-vouch",
        "a secondary keeps vouching while its primary confirms nothing (a silent stream)",
        (
            (
                RULES,
                "    return in_sync and confirmed_for is not None and confirmed_for < vouch_window",
                "    return in_sync",
            ),
        ),
    ),
    Mutant(
        "no-pause-step-down",
        "a primary resumed after a pause longer than peer_timeout does not step down",
        (
            (
                CORE,
                "            self._step_down("
                'f"paused for {gap:.2f}s, the others may have elected")',
                "            pass",
            ),
        ),
    ),
    Mutant(
        "pause-seen-only-by-ticks",
        "only a tick can notice a pause (an ack or probe reply first after it hides it)",
        (
            (
                CORE,
                "        self._observe_time(now)\n        self._handlers[type(event)](event, now)",
                "        if isinstance(event, Tick):\n            self._observe_time(now)\n"
                "        else:\n            self._last_input_at = max(self._last_input_at, now)\n"
                "        self._handlers[type(event)](event, now)",
            ),
        ),
    ),
    Mutant(
        "older-epoch-stream",
        "a stream from a primary of an older epoch is accepted",
        ((CORE, "        if primary_epoch >= self.current_epoch:", "        if True:"),),
    ),
    Mutant(
        "writes-before-epoch-started",
        "client writes are served before the new primary's epoch_started is durable",
        (
            (
                CORE,
                "        self._out.append(ResetCommit(point))",
                "        self._out.append(ResetCommit(point))\n"
                "        self.role = Role.PRIMARY\n"
                "        self.primary_index = self.config.index",
            ),
            (
                CORE,
                "        if iss is None or self.role is Role.PRIMARY "
                "or iss.epoch != self.current_epoch:",
                "        if iss is None or iss.epoch != self.current_epoch:",
            ),
        ),
    ),
    Mutant(
        "in-sync-while-behind",
        "a secondary is counted in sync while it is behind",
        (
            (
                IN_SYNC,
                "        caught_up = m.acked_seq >= self.last_seq or was_tip",
                "        caught_up = True",
            ),
        ),
    ),
    Mutant(
        "ack-from-outside-the-set",
        "the commit point counts an ack from a replica outside the in-sync set",
        (
            (
                IN_SYNC,
                "        point = rules.commit_point(self.durable_seq, acked)",
                "        point = rules.commit_point(\n"
                "            self.durable_seq,\n"
                "            [max([0, *(m.acked_seq for m in self.members.values())])],\n"
                "        )",
            ),
        ),
    ),
    Mutant(
        "epoch-not-persisted",
        "a newer epoch is not persisted",
        ((CORE, "        self._out.append(PersistEpoch(epoch))", "        pass"),),
    ),
    Mutant(
        "commit-without-acks",
        "the primary commits its own appends without the in-sync acks",
        (
            (
                IN_SYNC,
                "        point = rules.commit_point(self.durable_seq, acked)",
                "        point = self.durable_seq",
            ),
        ),
    ),
    Mutant(
        "commit-before-local-commit",
        "events streamed before the primary's own commit are acknowledged before it is done",
        (
            (
                IN_SYNC,
                "        point = rules.commit_point(self.durable_seq, acked)",
                "        point = rules.commit_point(self.last_seq, acked)",
            ),
        ),
    ),
    Mutant(
        "primary-on-after-failed-commit",
        "a primary whose commit of streamed events failed writes on in its epoch",
        (
            (
                CORE,
                '            self._step_down(f"its own commit of streamed events failed: '
                '{event.reason}")',
                "            pass",
            ),
        ),
    ),
    Mutant(
        "divergence-without-written",
        "the divergence answer leaves out events streamed but not yet durable on the primary",
        (
            (
                CORE,
                "SendDivergence(event.secondary, stream_id, iss.epoch, iss.last_seq)",
                "SendDivergence(event.secondary, stream_id, iss.epoch, iss.durable_seq)",
            ),
        ),
    ),
    Mutant(
        "elect-without-trusted",
        "an electorate in which no replica vouches elects",
        (
            (
                RULES,
                "    present = {c.index for c in members}\n",
                "    return True\n",
            ),
        ),
    ),
    Mutant(
        "older-epoch-commit",
        "a new primary commits an older epoch's events before its own epoch_started (Raft's "
        "figure 8)",
        (
            (
                IN_SYNC,
                "        if self.epoch_start_seq is None or point < self.epoch_start_seq:\n"
                "            return\n",
                "",
            ),
        ),
    ),
    Mutant(
        "unavailable-means-dead",
        "a primary that answers probes UNAVAILABLE (its database failed) is taken for dead",
        (
            (
                CORE,
                "            o.index == f.target[0] and o.process_gone for o in event.outcomes",
                "            o.index == f.target[0] and o.refused for o in event.outcomes",
            ),
        ),
    ),
    Mutant(
        "ack-before-store",
        "a secondary acks a batch before storing it",
        (
            (
                CORE,
                "        self.following.receiving.append(now)\n"
                "        self._out.append(StoreBatch(event.stream_id))",
                "        self.following.receiving.append(now)\n"
                "        self._out.append(SendAck(event.stream_id, event.batch_end, "
                "self.following.in_sync))\n"
                "        self._out.append(StoreBatch(event.stream_id))",
            ),
        ),
    ),
    Mutant(
        "truncate-off-by-one",
        "a divergent tail is cut one event too late",
        (
            (
                RULES,
                "    return min(own_last.seq, primary_end.seq, own_end_for_primary_epoch.seq)",
                "    return min(own_last.seq, primary_end.seq + 1, own_end_for_primary_epoch.seq)",
            ),
        ),
    ),
    Mutant(
        "commit-ignores-disconnected",
        "the commit point ignores an in-sync member whose stream is down",
        (
            (
                IN_SYNC,
                "        acked = [m.acked_seq for m in self.members.values() if m.in_sync]",
                "        acked = [m.acked_seq for m in self.members.values() "
                "if m.in_sync and m.connected]",
            ),
        ),
    ),
    Mutant(
        "voter-trusts-before-epoch",
        "a voter that was behind vouches as soon as the new primary counts it in sync",
        (
            (
                CORE,
                "            if sent is not None and (holds_epoch or f.vouched_at_vote):",
                "            if sent is not None:",
            ),
        ),
    ),
    Mutant(
        "stale-batch-vouch",
        "after a long stall storing a batch, the stream's queued 'in sync' renews the vouch",
        (
            (
                CORE,
                "        if took is not None and took >= self.config.vouch_window:",
                "        if False:",
            ),
        ),
    ),
    Mutant(
        "pause-keeps-stream",
        "a secondary woken from a pause believes what waited on its stream",
        (
            (
                CORE,
                '            self._end_stream(f"paused for {gap:.2f}s; reconnecting for '
                'fresh news")\n',
                "",
            ),
        ),
    ),
    Mutant(
        "delayed-word-renews-vouch",
        "the vouch counts from when the primary's word arrived, not from the ack it echoes",
        (
            (
                CORE,
                "                f.confirmed_at = max(f.confirmed_at, sent)",
                "                f.confirmed_at = now",
            ),
        ),
    ),
    Mutant(
        "database-failure-keeps-vouch",
        "a replica that answers UNAVAILABLE (its database failed) goes on vouching",
        (
            (
                CORE,
                "            DatabaseFailed: self._database_failed,\n",
                "            DatabaseFailed: lambda event, now: None,\n",
            ),
        ),
    ),
    Mutant(
        "older-word-believed",
        "a batch stored after a newer heartbeat was heard brings back the 'in sync' that "
        "heartbeat ended",
        (
            (
                CORE,
                "        self.following.superseded = len(self.following.receiving)\n",
                "",
            ),
        ),
    ),
    Mutant(
        "foreign-epoch-keeps-vouch",
        "a replica that learns of an epoch it did not vote in goes on vouching",
        (
            (
                CORE,
                "        if not own:\n            self.following.in_sync = False\n",
                "        if not own:\n",
            ),
        ),
    ),
    Mutant(
        "elect-without-the-silent",
        "with min_insync = 1, an election goes ahead without the vote of a peer that timed out",
        (
            (
                CORE,
                "            tuple(c.index for c in electorate if c.index != self.config.index) "
                "+ leaving + silent",
                "            tuple(c.index for c in electorate if c.index != self.config.index) "
                "+ leaving",
            ),
        ),
    ),
    Mutant(
        "joined-behind-told",
        "a secondary that joined behind the commit point is told it is in sync at once",
        (
            (
                IN_SYNC,
                "            self.in_sync and self.leaving_since is None and self.acked_seq >= "
                "self.joined_at_commit",
                "            self.in_sync and self.leaving_since is None",
            ),
        ),
    ),
    Mutant(
        "alone-while-unheard",
        "a primary acknowledges alone while a member it dropped unheard may still claim",
        ((IN_SYNC, "        if count == 0 and unheard:", "        if False:"),),
    ),
    Mutant(
        "gone-means-out",
        "a member seen dead counts as out though it may have voted before it died",
        (
            (
                IN_SYNC,
                "                listening = m.gone_at - m.last_ack_at < "
                "self._config.peer_timeout * 3 / 4",
                "                listening = True",
            ),
        ),
    ),
    Mutant(
        "claim-elects-short",
        "a claim elects without every replica but its primary present",
        (
            (
                RULES,
                "        c.claim is not None and c.claim not in present and needed - {c.claim} "
                "<= present",
                "        c.claim is not None and c.claim not in present",
            ),
        ),
    ),
    Mutant(
        "no-cut-off-step-down",
        "a primary that hears no running peer goes on saying it is primary",
        (
            (
                CORE,
                "            running\n            and not acking\n",
                "            False\n            and not acking\n",
            ),
        ),
    ),
    Mutant(
        "wait-for-lost-primary",
        "elections after the first wait for the vote of the primary that was lost",
        (
            (
                CORE,
                "        lost = f.target[0] if f.target is not None else f.lost_primary",
                "        lost = f.target[0] if f.target is not None else None",
            ),
        ),
    ),
    Mutant(
        "stale-gone-steps-down",
        "a primary takes a secondary that acks on its stream for gone on a stale probe round",
        (
            (
                CORE,
                "            and not acking\n",
                "",
            ),
        ),
    ),
    # -- the shell ---------------------------------------------------------------------------
    Mutant(
        "then-before-persist",
        "the executor carries out a step's effects (a vote's reply) before storage reported its "
        "epoch durable",
        (
            (
                EXECUTOR,
                "                self._storage.persist(ready.persist)\n                return\n",
                "                self._storage.persist(ready.persist)\n"
                "                self._carry_out(ready.then, envelope)\n"
                "                self._waiting[0] = (fx.Ready(ready.persist), "
                "Envelope(envelope.input))\n"
                "                return\n",
            ),
        ),
    ),
    Mutant(
        "steps-out-of-order",
        "the executor carries out the newest waiting step when storage reports the oldest one's "
        "durable writes done",
        (
            (
                EXECUTOR,
                "        ready, envelope = self._waiting.popleft()\n",
                "        ready, envelope = self._waiting.pop()\n",
            ),
        ),
    ),
    Mutant(
        "persist-failure-swallowed",
        "a durable write that failed is taken for done: what followed it is carried out",
        (
            (
                EXECUTOR,
                "        if failure is not None:\n            self._restart(",
                "        if False:\n            self._restart(",
            ),
        ),
    ),
    Mutant(
        "pause-unseen-by-inputs",
        "the executor stamps inputs with the time of its last tick: an input processed after "
        "the process paused looks as if no time passed",
        (
            (
                EXECUTOR,
                "        ready = core.step(self._clock(), event)\n",
                "        if isinstance(event, ins.Tick) or not hasattr(self, '_ticked_at'):\n"
                "            self._ticked_at = self._clock()\n"
                "        ready = core.step(self._ticked_at, event)\n",
            ),
        ),
    ),
    Mutant(
        "end-stream-dropped",
        "the executor forgets a served stream the core ended without ending it",
        (
            (
                EXECUTOR,
                "                    served.end(reason)\n",
                "                    pass\n",
            ),
        ),
    ),
    Mutant(
        "restart-reuses-ids",
        "a core restarted after a failed durable write starts its stream and ack ids over, so "
        "late messages of its predecessor's streams count",
        ((EXECUTOR, "ids_after=old.last_id", "ids_after=0"),),
    ),
    Mutant(
        "tenure-cache-kept",
        "events cached for the streams in one tenure are served in the next",
        (
            (
                EXECUTOR,
                "                self._commits.reset(seq)\n"
                "                self._tenure_changed()\n",
                "                self._commits.reset(seq)\n",
            ),
        ),
    ),
    Mutant(
        "ended-tenure-waiter-woken",
        "a write waiting in a tenure that ended is answered by a later commit of its seq",
        (
            (
                COMMIT,
                "            self._tenure_live = False\n            failed = self._take_waits()\n",
                "            self._tenure_live = False\n            failed = []\n",
            ),
        ),
    ),
    Mutant(
        "divergence-by-seq-alone",
        "the divergence check compares the secondary's log by seq, not by the primary end's epoch",
        (
            (
                PORTS,
                "        reader.epoch_end(primary_end.epoch),\n",
                "        reader.last_position(),\n",
            ),
        ),
    ),
    Mutant(
        "late-ack-counted",
        "an ack that arrives on a stream after it was replaced counts for the new one",
        (
            (
                IN_SYNC,
                "        elif m is None or m.stream is None or m.stream.stream_id != stream_id:\n",
                "        elif m is None or m.stream is None:\n",
            ),
        ),
    ),
    Mutant(
        "stale-probe-fresh",
        "a probe that failed with the channel's stale error is reported as the peer's answer",
        (
            (
                PEERS,
                "        if not result.refused or _answered_by_peer(call):\n"
                "            return result\n",
                "        return result\n",
            ),
        ),
    ),
    Mutant(
        "ack-before-commit",
        "storage reports a batch stored (and the core acks it) before its transaction committed",
        (
            (
                STORAGE,
                "                        stored, exact = self._store(conn, batch, known)\n",
                "                        stored, exact = self._store(conn, batch, known)\n"
                "                        self._inbox.submit(\n"
                "                            ins.BatchStored(stream_id, stored, "
                "batch.committed_seq, batch.in_sync, batch.echo_ack_id)\n"
                "                        )\n",
            ),
            (
                STORAGE,
                '            self._spans.mark("stored", stored.seq)\n'
                "            self._inbox.submit(\n",
                '            self._spans.mark("stored", stored.seq)\n'
                "            (lambda *a: None)(\n",
            ),
        ),
    ),
    Mutant(
        "stalled-primary-stays",
        "a primary whose database makes no progress keeps its role (fail-slow storage)",
        ((CORE, "        if stalled <= self.config.storage_timeout:\n", "        if True:\n"),),
    ),
    Mutant(
        "stalled-hands-over-to-no-one",
        "a stalled primary steps down though no secondary could take over",
        (
            (
                CORE,
                "        if successor is None:\n            return\n        self._step_down(",
                "        self._step_down(",
            ),
        ),
    ),
    Mutant(
        "stalled-answer-keeps-vouch",
        "a replica whose database is stalled answers its peer UNAVAILABLE before its core "
        "stopped vouching",
        (
            (
                EXECUTOR,
                "        stalled = self.stalled()\n        if stalled is not None:\n"
                "            return self.database_failed(stalled)\n"
                "        answer: Future[Answer] = Future()\n"
                "        self.inbox.put(Envelope(request, answer=answer, "
                "facts=self._storage.known_facts()))\n",
                "        stalled = self.stalled()\n        if stalled is not None:\n"
                "            failed: Future[Answer] = Future()\n"
                "            failed.set_exception(StorageUnavailable(stalled))\n"
                "            return failed\n"
                "        answer: Future[Answer] = Future()\n"
                "        self.inbox.put(Envelope(request, answer=answer, "
                "facts=self._storage.known_facts()))\n",
            ),
        ),
    ),
    Mutant(
        "stale-round-elects",
        "a probe round heard long after it ended (its read waited on a stalled database) "
        "still elects",
        (
            (
                CORE,
                "        if event.ended_at is not None and now - event.ended_at > "
                "self.config.probe_timeout:\n",
                "        if False:\n",
            ),
        ),
    ),
    Mutant(
        "stuck-hidden-by-answers",
        "any operation the database answers counts as progress, though an older one is stuck",
        (
            (
                WATCH,
                "            oldest = min(self._running.values(), default=None)\n",
                "            oldest = max(self._running.values(), default=None)\n",
            ),
        ),
    ),
    Mutant(
        "writer-on-after-failed-stream",
        "the writer writes on in the epoch of a streamed batch whose commit failed, before the "
        "core stepped down",
        ((WRITER, "            self._fenced_epoch = streamed\n", ""),),
    ),
    # -- deduplication without a query (issue 27): tests/properties/test_request_ids.py --
    Mutant(
        "request-ids-kept-past-truncation",
        "the writer's memory of request ids outlives a new tenure and a truncated tail, and what "
        "it recalls is not checked against the log: a retry of a request whose event was cut "
        "off is answered with whatever event now holds that seq",
        (
            (WRITER, "        self._recent.clear()\n", ""),
            (
                WRITER,
                "        if not found or found[0].seq != seq or found[0].request_id != request_id:",
                "        if not found:",
            ),
        ),
    ),
    Mutant(
        "refused-batch-not-looked-up",
        "a batch the log's unique index refused is written again without looking up its "
        "request ids: a retry after a failover fails instead of getting its first result",
        ((WRITER, "            if look_up:\n", "            if False:\n"),),
    ),
    Mutant(
        "idle-heartbeats-too-seldom",
        "an idle stream's heartbeats come four times as seldom as they may: past the quiet "
        "threshold (both ends probe), the vouch window (a secondary's word of being in sync "
        "lapses between two) and the peer timeout (the secondary gives its stream up)",
        (
            (
                IN_SYNC,
                "interval = max(interval, config.idle_heartbeat_interval - interval / 2)",
                "interval = 4 * config.idle_heartbeat_interval",
            ),
        ),
    ),
    Mutant(
        "new-primary-over-old-channel",
        "a secondary's first stream to a new primary goes over its old channel, which may sit "
        "in gRPC's reconnect back-off since that replica restarted (a live stream means no "
        "probes to keep it fresh): the failover waits out the back-off",
        ((SECONDARY, "            self.peers.renew(effect.primary)\n", "            pass\n"),),
    ),
    # -- membership changes (issue 25) --
    Mutant(
        "change-before-previous-committed",
        "a membership change is started before the previous one committed",
        ((CORE, "        if pending > iss.commit_point:", "        if False:"),),
    ),
    Mutant(
        "learner-counted",
        "a learner joins the in-sync set (counted for commits) once caught up",
        (
            (
                IN_SYNC,
                "        elif caught_up and not m.in_sync and voter and self._may_join(secondary):",
                "        elif caught_up and not m.in_sync:",
            ),
        ),
    ),
    Mutant(
        "removed-still-counted",
        "a voter removed stays in the in-sync set, its acks counted and its vouch kept",
        (
            (
                IN_SYNC,
                "            if m.in_sync and not membership.is_voter(m.index) and "
                "m.leaving_since is None:",
                "            if False:",
            ),
        ),
    ),
    Mutant(
        "promoted-joins-before-commit",
        "a learner promoted joins the in-sync set before its promotion is committed",
        (
            (
                IN_SYNC,
                "        return voter in before or self.commit_point >= m.seq",
                "        return True",
            ),
        ),
    ),
    Mutant(
        "index-reused",
        "an index that belonged to a removed replica is added again",
        ((MEMBERSHIP, "                if i in self.removed:", "                if False:"),),
    ),
    Mutant(
        "promote-without-catch-up",
        "a learner is promoted without the check that it keeps up",
        (
            (
                CORE,
                "            return iss.promotion_refusal(index, now)",
                "            return None",
            ),
        ),
    ),
    Mutant(
        "new-membership-elects-at-once",
        "an election counts only the latest membership's voters before its change committed",
        ((CORE, "        return m.voters_in_transition", "        return m.voters"),),
    ),
    Mutant(
        "removed-replica-wins-ties",
        "a replica being removed is chosen on a tie (it and the others name different candidates)",
        (
            (
                RULES,
                "        key=lambda c: (c.position.epoch, c.position.seq, c.index not in removing, "
                "-c.index),",
                "        key=lambda c: (c.position.epoch, c.position.seq, True, -c.index),",
            ),
        ),
    ),
    Mutant(
        "failed-membership-write-not-reread",
        "after a written batch failed to commit, the core keeps the membership it never stored",
        (
            (
                STORAGE,
                "        with self._membership_lock:\n            self._membership_unsure = True\n",
                "",
            ),
        ),
    ),
    Mutant(
        "membership-told-after-streamed",
        "the core hears of the primary's membership event only after it was streamed",
        (
            (
                NODE,
                "        if self.storage is not None:\n            self.storage.written(events)\n"
                "        self.streams.written(events)",
                "        self.streams.written(events)\n        if self.storage is not None:\n"
                "            self.storage.written(events)",
            ),
        ),
    ),
    Mutant(
        "secondary-with-a-primary-never-probes",
        "a secondary that has a primary to follow takes its stream for alive, however silent or"
        " gone: it probes no one, so it never elects",
        (
            (
                CORE,
                "        return (\n            f.stream_id is not None\n"
                "            and f.streaming\n"
                "            and now - f.last_contact <= self.config.stream_quiet_after\n"
                "        )",
                "        return f.target is not None",
            ),
        ),
    ),
    Mutant(
        "open-stream-counts-as-alive",
        "a primary takes a secondary's open stream for alive however long its acks have"
        " stopped: it never probes a peer cut off behind an open stream",
        (
            (
                IN_SYNC,
                "            if m.connected and now - m.last_ack_at <= quiet_after",
                "            if m.connected",
            ),
        ),
    ),
    Mutant(
        "in-sync-timeouts-only-after-a-round",
        "a primary whose secondaries all stream runs the in-sync set's timeouts only when a"
        " probe round comes back: a laggard acking heartbeats is never removed",
        (
            (
                CORE,
                "            # run as after a round (a laggard acking heartbeats is removed all the"
                " same).\n            self._round_heard((), now)",
                "            # run as after a round (a laggard acking heartbeats is removed all the"
                " same).\n            pass",
            ),
        ),
    ),
    Mutant(
        "woken-primary-trusts-its-streams",
        "a primary that woke from a pause skips the streaming peers at once instead of probing"
        " every peer for the awake window",
        (
            (
                CORE,
                "            if self.role is not Role.PRIMARY or not iss.awake(now):",
                "            if self.role is not Role.PRIMARY:",
            ),
        ),
    ),
    Mutant(
        "partial-round-elects",
        "a replica elects on a round that asked only some voters (begun as primary, of the"
        " peers whose streams were silent), blind to a voter that still vouches",
        (
            (
                CORE,
                "        if not self.election_voters() <= asked:",
                "        if False:",
            ),
        ),
    ),
)
