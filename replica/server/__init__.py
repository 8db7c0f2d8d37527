"""The replica process: node.py wires storage, replication and the chat service into one
gRPC server and starts and stops them in order; auth.py holds the interceptors (cluster
secret, peer certificates); metrics.py the Prometheus endpoint; timetravel.py rebuilds the
projections as of a seq; stderr_filter.py quiets the C core's noise. May import every other
room."""
