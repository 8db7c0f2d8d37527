"""python -m replica --index N [--config cluster.toml] [--db URL] [--data-dir DIR]

python -m replica --index N --address H:P [--peer-address H:P] --join H:P[,H:P...]: a new
replica joining a running cluster (no config file needed; an operator adds it with
`python -m client admin member add`, then promotes it once it has caught up).

python -m replica rebuild --until SEQ --into URL: the projections as they stood at SEQ, written
into another database (see `python -m replica rebuild --help`)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from projections.events import MalformedEvent
from replica.config import (
    ClusterConfig,
    ConfigError,
    ReplicaAddress,
    ReplicaSettings,
    default_db_url,
    load_cluster_config,
    parse_host_port,
    resolve_cluster_secret,
)
from replica.storage.database import SchemaError, UnsafeDurability


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # (the chat-replica console script, or python -m replica)
    prog = "chat-replica" if os.path.basename(sys.argv[0]) == "chat-replica" else None
    parser = argparse.ArgumentParser(prog=prog or "python -m replica", description=__doc__)
    parser.add_argument(
        "--index",
        type=int,
        default=int(os.environ.get("CHAT_INDEX", "0")),
        help="which [[replicas]] entry of the config this process is (default 0)",
    )
    parser.add_argument("--config", default=os.environ.get("CHAT_CONFIG"), help="cluster TOML file")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in --data-dir)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CHAT_DATA_DIR", "data"),
        help="where the SQLite database and the generated cluster secret live (default: data)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CHAT_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO (default), WARNING or ERROR",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("CHAT_METRICS_ADDRESS"),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: the replica's"
        " metrics_address in the config, if any)",
    )
    parser.add_argument(
        "--join",
        metavar="H:P[,H:P...]",
        help="join a running cluster through any of these members (client addresses); needs"
        " --address; no config file needed (a --config's [[replicas]] and timeouts are"
        " replaced by the cluster's)",
    )
    parser.add_argument(
        "--address", metavar="H:P", help="with --join: where clients reach this replica"
    )
    parser.add_argument(
        "--peer-address",
        metavar="H:P",
        help="with --join: where replicas reach this replica (required in a TLS cluster)",
    )
    parser.add_argument(
        "--cluster-secret-file",
        metavar="FILE",
        help="read the cluster secret from FILE (default: $CHAT_CLUSTER_SECRET, the config's,"
        " or DATA_DIR/cluster.secret)",
    )
    parser.add_argument(
        "--force-new-cluster",
        action="store_true",
        help="DISASTER OVERRIDE: make this replica the one voter of a new cluster from its own"
        " log, every other member removed for good; what only they held is lost (see"
        " docs/replication.md). Needs min_insync = 1. Never automatic",
    )
    parser.add_argument(
        "--trace-spans",
        default=os.environ.get("CHAT_TRACE_SPANS"),
        metavar="FILE",
        help="append a timestamp for each step of every write to FILE (for make bench's"
        " critical path of a send; off by default)",
    )
    return parser.parse_args(argv)


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster secret file {path}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"the cluster secret file {path} is empty")
    return secret


def _joined(args: argparse.Namespace, cluster: ClusterConfig, data_dir: Path) -> ClusterConfig:
    """The config of a replica joining a running cluster (replica/server/join.py)."""
    from replica.server.join import joined_config

    if not args.address:
        raise ConfigError("--join needs --address (where clients reach this replica)")
    parse_host_port(args.address, "--address")
    if args.peer_address:
        parse_host_port(args.peer_address, "--peer-address")
    elif cluster.tls is not None:
        raise ConfigError("in a TLS cluster, --join needs --peer-address")
    me = ReplicaAddress(args.index, args.address, args.db, args.peer_address or None)
    joins = [a.strip() for a in args.join.split(",") if a.strip()]
    secret = resolve_cluster_secret(cluster, data_dir)
    return joined_config(cluster, me, joins, secret, data_dir=data_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rebuild"]:
        from replica.server.timetravel import main as rebuild_main

        return rebuild_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s [replica {args.index}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mysql.connector").setLevel(logging.WARNING)
    log = logging.getLogger("replica")
    try:
        cluster = load_cluster_config(args.config)
        if args.cluster_secret_file:
            cluster = replace(cluster, cluster_secret=_read_secret(args.cluster_secret_file))
        data_dir = Path(args.data_dir)
        if args.join:
            cluster = _joined(args, cluster, data_dir)
        elif args.address or args.peer_address:
            raise ConfigError("--address and --peer-address go with --join")
        me = cluster.replica(args.index)
        db_url = (
            args.db
            or os.environ.get(f"CHAT_DB_URL_{args.index}")
            or me.db
            or default_db_url(args.index, data_dir)
        )
        if args.metrics_address:
            parse_host_port(args.metrics_address, "--metrics-address")
        settings = ReplicaSettings(
            args.index,
            cluster,
            db_url,
            data_dir,
            args.metrics_address,
            Path(args.trace_spans) if args.trace_spans else None,
            joined=bool(args.join),
            force_new_cluster=args.force_new_cluster,
        )
        if args.force_new_cluster and cluster.min_insync != 1:
            raise ConfigError(
                "--force-new-cluster makes a cluster of one voter: run it with min_insync = 1 "
                f"(CHAT_MIN_INSYNC=1; the config says {cluster.min_insync}), and raise it again "
                "once new replicas are promoted"
            )
        if cluster.tls is not None:
            from replica.server.stderr_filter import filter_stderr

            filter_stderr()  # gRPC logs every failed TLS handshake: once a minute is enough
        from replica.server.node import ReplicaNode  # imported late: grpc start-up is slow

        node = ReplicaNode(settings)
    except (ConfigError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except SQLAlchemyError as exc:
        log.error("cannot open the database: %s", str(exc).splitlines()[0])
        return 1

    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("replica %d: %s, shutting down", args.index, signal.Signals(signum).name)
        done.set()
        node.interrupt()  # (if it is still waiting for its database)

    # Installed before the server starts: a SIGTERM right after it answers is a clean stop.
    signal.signal(signal.SIGTERM, on_signal)
    # An operator's (or the test harness's) view into a replica that hangs: SIGUSR1 writes
    # every thread's stack to stderr (the log), and the replica runs on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except OSError as exc:
        log.error("%s", exc)
        node.stop()
        return 1
    except MalformedEvent as exc:
        # A logged event this code cannot read (a newer version's, or damaged): nothing after
        # it can be applied, so the replica does not serve; the line names the seq.
        log.error("cannot replay the log: %s", exc)
        node.stop()
        return 1
    except (SchemaError, UnsafeDurability) as exc:
        log.error("%s", exc)
        node.stop()
        return 1
    except SQLAlchemyError as exc:  # (one that waiting for the database cannot fix)
        log.error("cannot open the database: %s", str(exc).splitlines()[0])
        node.stop()
        return 1
    # Woken now and then: a signal delivered to another thread (Linux may pick any) runs its
    # handler only once this thread runs Python again -- a plain wait() would sleep through it.
    while not done.wait(0.5):
        if node.left.is_set():  # removed from the cluster (the executor logged why)
            break
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
