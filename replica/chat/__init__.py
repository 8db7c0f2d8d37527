"""The chat service: commands turned into events through the log writer (service.py), the
Chat gRPC servicer with its one mapping of domain errors to status codes (servicer.py), and
what checks a command before it is written: validation, password hashing, session tokens and
rate limits. May import `replication/`, `storage/`, `protocol/` and the root's leaves; nothing
of `server/`."""
