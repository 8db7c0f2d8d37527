"""Conversions between log records and their replication-proto form."""

from __future__ import annotations

import datetime as dt

from eventlog import Event, decode_payload, stored_payload
from protos import replication_pb2 as rpb

_EPOCH = dt.datetime(1970, 1, 1)


def event_to_proto(event: Event) -> rpb.Event:
    micros = (event.created_at - _EPOCH) // dt.timedelta(microseconds=1)
    return rpb.Event(
        seq=event.seq,
        epoch=event.epoch,
        type=event.type,
        payload=stored_payload(event),
        request_id=event.request_id or "",
        created_at_unix_us=micros,
    )


def event_from_proto(message: rpb.Event) -> Event:
    return Event(
        seq=message.seq,
        epoch=message.epoch,
        type=message.type,
        payload=decode_payload(message.payload),
        request_id=message.request_id or None,
        created_at=_EPOCH + dt.timedelta(microseconds=message.created_at_unix_us),
        payload_json=message.payload,
    )
