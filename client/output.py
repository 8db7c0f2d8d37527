"""Text the CLI prints: tab-separated lines for scripts, a table for humans."""

from __future__ import annotations

from collections.abc import Sequence

from protos import chat_pb2

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape_field(text: str) -> str:
    """Backslash-escapes what would break a tab-separated line (tab, newline, backslash)."""
    return text.translate(_ESCAPES)


def inbox_line(message: chat_pb2.Message) -> str:
    return "\t".join((str(message.message_id), message.sender, escape_field(message.body)))


def history_line(message: chat_pb2.Message) -> str:
    return "\t".join(
        (str(message.message_id), message.sender, message.recipient, escape_field(message.body))
    )


_STATUS_HEADER = (
    "index",
    "address",
    "role",
    "epoch",
    "last seq",
    "applied seq",
    "lag",
    "in-sync",
    "reachable",
)


def status_table(status: chat_pb2.ClusterStatusReply) -> str:
    rows = [
        (
            str(replica.index),
            replica.address,
            replica.role,
            str(replica.epoch),
            str(replica.last_seq),
            str(replica.applied_seq),
            str(replica.lag),
            _yes_no(replica.in_sync),
            _yes_no(replica.reachable),
        )
        for replica in sorted(status.replicas, key=lambda replica: replica.index)
    ]
    primary = f"replica {status.primary_index}" if status.primary_known else "unknown"
    footer = f"primary: {primary} (answered by replica {status.answered_by})"
    return "\n".join([*_aligned([_STATUS_HEADER, *rows]), footer])


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
