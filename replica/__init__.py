"""The replica server, in rooms by job. Imports flow one way, down this list, and a test
(tests/test_layout.py) fails on one that goes up or reaches into another room's `_names`:

- `server/`       the process: node wiring, auth, metrics, time travel
- `chat/`         the chat service: commands, their gRPC servicer, validation, passwords, tokens,
                  rate limits
- `replication/`  the shell around the protocol: executor, ports, peers, streams, the replication
                  servicer, cluster status, TLS between replicas
- `storage/`      the database: the log writer, commit tracker, projections' directory and
                  notifier, the role the writer fences on, spans of a write
- `protocol/`     the pure protocol core (imports nothing else of `replica`)

At the root: the entry points (`python -m replica`, `python -m replica.launcher`) and two leaves
every room may use, `config.py` (the cluster's configuration) and `errors.py` (domain errors).
"""
