"""Text the CLI prints: tab-separated lines for scripts, a table for humans."""

from __future__ import annotations

from collections.abc import Sequence

from client import ClusterStatus, Membership, MembershipChange, Message

_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
# Every other C0 control, DEL and every C1 control, as \xNN: nothing a sender writes can
# reach the reader's terminal as a control sequence (ESC [, BEL, NUL, CSI ...).
_ESCAPES.update(
    {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in _ESCAPES}
)


def escape_field(text: str) -> str:
    """One tab-separated field, safe to print: backslash, tab, newline and carriage return
    as \\\\ \\t \\n \\r, every other control character as \\xNN."""
    return text.translate(_ESCAPES)


def sent_at(message: Message) -> str:
    """When the message was committed, ISO 8601 in UTC with milliseconds."""
    when = message.sent_at
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def inbox_line(message: Message) -> str:
    """ID, SENT_AT, SENDER, TEXT (the id first and the text last, as scripts expect)."""
    return "\t".join(
        (
            str(message.message_id),
            sent_at(message),
            escape_field(message.sender),
            escape_field(message.body),
        )
    )


def history_line(message: Message) -> str:
    """ID, SENT_AT, SENDER, RECIPIENT, TEXT."""
    return "\t".join(
        (
            str(message.message_id),
            sent_at(message),
            escape_field(message.sender),
            escape_field(message.recipient),
            escape_field(message.body),
        )
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
    "knows it",
    "reachable",
)
UNKNOWN = "-"


def status_table(status: ClusterStatus) -> str:
    """One row per replica; `-` for what the answering replica does not know (a replica that
    did not answer its last probe), never a made-up 0. "in-sync" is the primary's view,
    "knows it" the replica's own word (only that lets it take over)."""
    rows = []
    for replica in sorted(status.replicas, key=lambda replica: replica.index):
        known = replica.reachable or replica.index == status.answered_by
        rows.append(
            (
                str(replica.index),
                escape_field(replica.address),
                (escape_field(replica.role) if known else UNKNOWN)
                + (" (learner)" if replica.learner else ""),
                str(replica.epoch) if known else UNKNOWN,
                str(replica.last_seq) if known else UNKNOWN,
                str(replica.applied_seq) if known else UNKNOWN,
                str(replica.lag) if known and status.primary_known else UNKNOWN,
                _yes_no(replica.in_sync) if status.primary_known else UNKNOWN,
                _yes_no(replica.knows_in_sync) if known else UNKNOWN,
                _yes_no(replica.reachable),
            )
        )
    primary = f"replica {status.primary_index}" if status.primary_known else "unknown"
    footer = f"primary: {primary} (answered by replica {status.answered_by})"
    return "\n".join([*_aligned([_STATUS_HEADER, *rows]), footer])


_MEMBERS_HEADER = ("index", "address", "member", "role", "in-sync", "lag", "reachable", "epoch")


def members_table(membership: Membership) -> str:
    """One row per member, `-` where the answering replica does not know (as status_table),
    a "peer address" column when some member has one; then whether a change is in progress,
    the removed indexes and the primary."""
    with_peers = any(member.peer_address for member in membership.members)
    header = (*_MEMBERS_HEADER, "peer address") if with_peers else _MEMBERS_HEADER
    rows = []
    for member in sorted(membership.members, key=lambda member: member.index):
        known = member.reachable or member.index == membership.answered_by
        primary_known = membership.primary_index is not None
        row = (
            str(member.index),
            escape_field(member.address),
            "voter" if member.voter else "learner",
            escape_field(member.role) if known else UNKNOWN,
            _yes_no(member.in_sync) if primary_known else UNKNOWN,
            str(member.lag) if known and primary_known else UNKNOWN,
            _yes_no(member.reachable),
            str(member.epoch) if known else UNKNOWN,
        )
        rows.append((*row, escape_field(member.peer_address) or UNKNOWN) if with_peers else row)
    if membership.membership_seq == 0:
        change = "membership: the cluster config's (seq 0)"
    elif membership.change_committed:
        change = f"membership: seq {membership.membership_seq}, committed"
    else:
        change = (
            f"membership: seq {membership.membership_seq}, a change in progress (not committed"
            " yet; no other change is accepted until it is)"
        )
    removed = ", ".join(map(str, sorted(membership.removed))) or "none"
    primary = (
        "unknown" if membership.primary_index is None else f"replica {membership.primary_index}"
    )
    return "\n".join(
        [
            *_aligned([header, *rows]),
            change,
            f"removed: {removed}",
            f"primary: {primary} (answered by replica {membership.answered_by})",
        ]
    )


def member_added_line(
    change: MembershipChange, index: int, address: str, promote_command: str
) -> str:
    """`address`: the one asked for, should the reply not list the new member."""
    member = change.member(index)
    address = member.address if member is not None else address
    peers = (
        f", replicas reach it at {escape_field(member.peer_address)}"
        if member and member.peer_address
        else ""
    )
    return (
        f"replica {index} added as a learner at {escape_field(address)}{peers} (seq {change.seq});"
        f" promote it once it has caught up: {promote_command}"
    )


def member_promoted_line(change: MembershipChange, index: int) -> str:
    return f"replica {index} promoted to voter (seq {change.seq})"


def member_removed_line(change: MembershipChange, index: int) -> str:
    return (
        f"replica {index} removed (seq {change.seq}); its index is never used again, and its"
        " process stops by itself"
    )


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
