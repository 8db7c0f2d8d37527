"""The shell around the protocol core: the executor -- one thread that owns the core, takes
every input from one queue and carries out its effects (executor.py) -- and its ports
(ports.py): storage on the database (storage_worker.py), peers and their probes and votes
(peers.py), the streams a primary serves and a secondary follows (primary.py, secondary.py),
the replication gRPC servicer (service.py), the cluster status a client sees (status.py) and
TLS between replicas (tls.py). May import `storage/`, `protocol/` and the root's leaves;
nothing of `chat/` or `server/`."""
