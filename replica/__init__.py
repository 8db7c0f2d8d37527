"""The replica server: command validation, gRPC servicers, replication and election."""
