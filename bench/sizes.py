"""How much each measurement does: the full run (`make bench`) and the smoke run (`--smoke`).

Both measure the same figures under the same names, so the smoke run checks the whole suite
end to end in well under a minute."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    commit_seconds: float  # each commit-rate baseline runs this long...
    commit_max_rows: int  # ...or until it wrote this many rows
    batch_rows: int  # rows per commit in the batched baseline
    grpc_seconds: float
    grpc_max_calls: int
    sender_counts: tuple[int, ...]
    throughput_seconds: float  # per sender count
    latency_rate: float  # messages/s, paced
    latency_seconds: float
    latency_senders: int  # threads sharing the paced schedule (one send in flight each)
    failover_trials: int  # per kind (SIGKILL, SIGSTOP)
    catchup_missing: int  # events the lagging replica lacks
    catchup_log_multiples: tuple[int, ...]  # log size = multiple x missing
    seed_batch: int  # events per transaction when writing a log directly
    scale_sizes: tuple[int, int]  # accounts and messages of the scale phase's two datasets
    path_sends: int  # sends, one after another, whose critical path is traced
    membership_sizes: tuple[int, ...]  # events in the log when a replica is added
    membership_senders: int  # closed-loop senders during the loaded join
    membership_window_s: float  # the throughput window just before the loaded join's add

    @property
    def max_senders(self) -> int:
        return max(self.sender_counts)


FULL = Sizes(
    commit_seconds=3.0,
    commit_max_rows=200_000,
    batch_rows=500,
    grpc_seconds=3.0,
    grpc_max_calls=200_000,
    sender_counts=(1, 8, 32),
    throughput_seconds=10.0,
    latency_rate=200.0,
    latency_seconds=10.0,
    latency_senders=8,
    failover_trials=5,
    catchup_missing=100_000,
    catchup_log_multiples=(1, 3),
    seed_batch=5_000,
    scale_sizes=(100_000, 1_000_000),
    path_sends=500,
    membership_sizes=(100_000, 1_000_000),
    membership_senders=8,
    membership_window_s=10.0,
)

SMOKE = Sizes(
    commit_seconds=0.3,
    commit_max_rows=2_000,
    batch_rows=500,
    grpc_seconds=0.3,
    grpc_max_calls=2_000,
    sender_counts=(1, 8, 32),
    throughput_seconds=1.0,
    latency_rate=200.0,
    latency_seconds=1.0,
    latency_senders=8,
    failover_trials=1,
    catchup_missing=300,
    catchup_log_multiples=(1, 3),
    seed_batch=200,
    scale_sizes=(200, 1_000),
    path_sends=50,
    membership_sizes=(300,),  # (one size: each join costs make test seconds)
    membership_senders=4,
    membership_window_s=1.0,
)
