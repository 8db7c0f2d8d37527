"""Cluster configuration: one TOML file, overridden by CLI flags and CHAT_* variables.

cluster_secret = "..."          # or CHAT_CLUSTER_SECRET; default: data_dir/cluster.secret
heartbeat_interval_ms = 100
peer_timeout_ms = 600           # a peer silent this long is considered dead
insync_timeout_ms = 1000        # a secondary this far behind leaves the in-sync set
storage_timeout_ms = 2000       # a primary whose database is stuck this long hands over
slow_storage_ms = 200           # database operations slower than this are logged
min_insync = 1
min_password_length = 8         # for new accounts
failed_logins_per_account = 5   # then one more per 10 s (RESOURCE_EXHAUSTED meanwhile)
failed_logins_per_address = 50  # then one more per second
registrations_per_address = 100 # then one more per second
[tls]                           # optional; or CHAT_TLS_{CERT,KEY,CA}_FILE (see TlsConfig)
cert_file = "tls/replica.pem"   # PEM; relative paths are relative to this file's directory
key_file = "tls/replica.key"
ca_file = "tls/ca.pem"          # the CA that signed every replica's certificate
[[replicas]]
index = 0
address = "127.0.0.1:50051"
peer_address = "127.0.0.1:50061"     # optional (required with [tls]): where replicas reach it
db = "sqlite:///data/replica-0.db"   # optional
metrics_address = "127.0.0.1:9101"   # optional: Prometheus metrics at http://H:P/metrics
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ReplicaAddress:
    index: int
    address: str
    db: str | None = None
    peer_address: str | None = None
    """A second port for replica-to-replica calls; with TLS it requires a client certificate."""
    metrics_address: str | None = None
    """Where this replica serves its Prometheus metrics (HTTP, /metrics); None: nowhere."""

    @property
    def replication_address(self) -> str:
        """Where the other replicas call this one."""
        return self.peer_address or self.address

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        if self.peer_address is None or self.peer_address == self.address:
            return (self.address,)
        return (self.address, self.peer_address)


@dataclass(frozen=True)
class TlsConfig:
    """PEM files (checked and loaded by replica/replication/tls.py). One certificate may serve every
    replica if its subjectAltName lists all their hosts; or each host sets its own through
    CHAT_TLS_CERT_FILE and CHAT_TLS_KEY_FILE. It must be signed by ca_file, and be usable
    both as a server and as a client certificate (replicas present it to each other)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


TLS_FILE_SETTINGS = ("cert_file", "key_file", "ca_file")
TLS_ENV = {name: f"CHAT_TLS_{name.upper()}" for name in TLS_FILE_SETTINGS}


DEFAULT_REPLICAS = (
    ReplicaAddress(0, "127.0.0.1:50051", metrics_address="127.0.0.1:9101"),
    ReplicaAddress(1, "127.0.0.1:50052", metrics_address="127.0.0.1:9102"),
    ReplicaAddress(2, "127.0.0.1:50053", metrics_address="127.0.0.1:9103"),
)


@dataclass(frozen=True)
class ClusterConfig:
    replicas: tuple[ReplicaAddress, ...] = DEFAULT_REPLICAS
    cluster_secret: str | None = None
    heartbeat_interval_ms: int = 100
    peer_timeout_ms: int = 600
    insync_timeout_ms: int = 1000
    # A primary whose database makes no progress this long hands over to an in-sync
    # secondary (fail-slow storage); 0: twice insync_timeout_ms.
    storage_timeout_ms: int = 0
    # A database operation slower than this is counted and logged (at most once a minute).
    slow_storage_ms: int = 200
    min_insync: int = 1
    max_subscriptions: int = 1000  # Subscribe and Session streams (each holds a thread)
    # Requests one Session stream may have awaiting their results; one more is refused with
    # RESOURCE_EXHAUSTED (the client library keeps below it by itself).
    max_in_flight_per_session: int = 64
    max_sessions_per_account: int = 100  # a login beyond it ends the oldest session
    # Rate limits (token buckets, replica/chat/ratelimit.py): tries allowed at once, then one per
    # 10 s (per account) or per second (per client address).
    min_password_length: int = 8  # for new accounts
    failed_logins_per_account: int = 5
    failed_logins_per_address: int = 50
    registrations_per_address: int = 100
    # Run on a MySQL server that may acknowledge commits it has not flushed (see
    # replica.storage.database.durability_risks): refused unless this says so.
    allow_unsafe_durability: bool = False
    tls: TlsConfig | None = None

    @property
    def effective_storage_timeout_ms(self) -> int:
        return self.storage_timeout_ms or 2 * self.insync_timeout_ms

    def replica(self, index: int) -> ReplicaAddress:
        for r in self.replicas:
            if r.index == index:
                return r
        known = ", ".join(str(r.index) for r in self.replicas)
        raise ConfigError(f"replica index {index} is not in the cluster (known: {known})")

    def peers_of(self, index: int) -> tuple[ReplicaAddress, ...]:
        return tuple(r for r in self.replicas if r.index != index)


def load_cluster_config(
    path: str | Path | None, env: Mapping[str, str] = os.environ
) -> ClusterConfig:
    config = ClusterConfig()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
        config = _from_mapping(data, str(path))
    if env.get("CHAT_CLUSTER_SECRET"):
        config = replace(config, cluster_secret=env["CHAT_CLUSTER_SECRET"])
    if env.get("CHAT_MIN_INSYNC"):
        config = replace(config, min_insync=_int(env["CHAT_MIN_INSYNC"], "CHAT_MIN_INSYNC"))
    config = _tls_from_env(config, env)
    if config.tls is not None:
        _check_peer_addresses(config, str(path) if path is not None else "the defaults")
    return config


def _tls_from_env(config: ClusterConfig, env: Mapping[str, str]) -> ClusterConfig:
    """CHAT_TLS_* replace single files of [tls] (relative to the working directory), or turn
    TLS on when all three are given."""
    given = {name: Path(env[var]) for name, var in TLS_ENV.items() if env.get(var)}
    if not given:
        return config
    if config.tls is not None:
        return replace(config, tls=replace(config.tls, **given))
    missing = [TLS_ENV[name] for name in TLS_FILE_SETTINGS if name not in given]
    if missing:
        raise ConfigError(
            f"TLS needs cert, key and CA files: set {', '.join(missing)} too "
            "(or a [tls] table in the config)"
        )
    return replace(config, tls=TlsConfig(**given))


def _check_peer_addresses(config: ClusterConfig, source: str) -> None:
    """With TLS, replicas call each other on a port of their own: gRPC Python can require a
    client certificate only for a whole port, and clients have none."""
    clients = {r.address for r in config.replicas}
    seen: set[str] = set()
    for r in config.replicas:
        if r.peer_address is None:
            raise ConfigError(
                f"{source}: with TLS, replica {r.index} needs a peer_address (a second "
                "host:port where replicas reach it with client certificates)"
            )
        if r.peer_address in clients or r.peer_address in seen:
            raise ConfigError(
                f"{source}: replica {r.index}'s peer_address {r.peer_address} must differ "
                "from every address and every other peer_address"
            )
        seen.add(r.peer_address)


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None


def _from_mapping(data: Mapping[str, Any], source: str) -> ClusterConfig:
    known = {f for f in ClusterConfig.__dataclass_fields__ if f not in ("replicas", "tls")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "replicas":
            continue
        if key == "tls":
            kwargs["tls"] = _tls_from_table(value, source)
            continue
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if key == "cluster_secret":
            kwargs[key] = value
        elif key == "allow_unsafe_durability":
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be true or false, not {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = _int(value, key)
    replicas = data.get("replicas")
    if replicas is not None:
        if not isinstance(replicas, list) or not replicas:
            raise ConfigError(f"{source}: [[replicas]] must list at least one replica")
        parsed = []
        for entry in replicas:
            if "index" not in entry or "address" not in entry:
                raise ConfigError(f"{source}: every [[replicas]] entry needs index and address")
            peer_address = entry.get("peer_address")
            metrics_address = entry.get("metrics_address")
            if metrics_address is not None:
                metrics_address = str(metrics_address)
                parse_host_port(metrics_address, f"{source}: metrics_address")
            parsed.append(
                ReplicaAddress(
                    _int(entry["index"], "index"),
                    str(entry["address"]),
                    entry.get("db"),
                    None if peer_address is None else str(peer_address),
                    metrics_address,
                )
            )
        if len({r.index for r in parsed}) != len(parsed):
            raise ConfigError(f"{source}: replica indexes must be distinct")
        kwargs["replicas"] = tuple(sorted(parsed, key=lambda r: r.index))
    config = ClusterConfig(**kwargs)
    if config.min_insync < 1 or config.min_insync > len(config.replicas):
        raise ConfigError(f"{source}: min_insync must be between 1 and {len(config.replicas)}")
    if config.max_sessions_per_account < 1:
        raise ConfigError(f"{source}: max_sessions_per_account must be at least 1")
    if config.storage_timeout_ms < 0:
        raise ConfigError(f"{source}: storage_timeout_ms must be positive (or 0: the default)")
    for name in (
        "slow_storage_ms",
        "max_subscriptions",
        "max_in_flight_per_session",
        "min_password_length",
        "failed_logins_per_account",
        "failed_logins_per_address",
        "registrations_per_address",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"{source}: {name} must be at least 1")
    return config


def parse_host_port(address: str, what: str) -> tuple[str, int]:
    """("127.0.0.1", 9101) from "127.0.0.1:9101" (or "[::1]:9101")."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def _tls_from_table(table: Any, source: str) -> TlsConfig:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: tls must be a table ([tls])")
    unknown = sorted(set(table) - set(TLS_FILE_SETTINGS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r} in [tls]")
    missing = [name for name in TLS_FILE_SETTINGS if name not in table]
    if missing:
        raise ConfigError(f"{source}: [tls] needs {', '.join(missing)}")
    base = Path(source).parent
    paths: dict[str, Path] = {}
    for name in TLS_FILE_SETTINGS:
        value = table[name]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: [tls] {name} must be a file path")
        paths[name] = base / Path(value).expanduser()
    return TlsConfig(**paths)


def resolve_cluster_secret(config: ClusterConfig, data_dir: Path) -> bytes:
    """The configured secret, or one shared by every replica using this data directory (made
    on first start), so a single machine needs no setup."""
    if config.cluster_secret:
        return config.cluster_secret.encode("utf-8")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / "cluster.secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(100):
        secret = path.read_text().strip()
        if secret:  # another replica may be mid-write
            return secret.encode("utf-8")
    raise ConfigError(f"{path} is empty; delete it or set cluster_secret")


@dataclass(frozen=True)
class ReplicaSettings:
    index: int
    cluster: ClusterConfig
    db_url: str
    data_dir: Path
    metrics_override: str | None = None  # --metrics-address
    spans_file: Path | None = None  # --trace-spans (replica/storage/spans.py)
    # The membership before any membership event in the log: the config's replicas; none for
    # a replica that joined a running cluster (--join: it learns the membership from the log).
    joined: bool = False
    # --force-new-cluster: the disaster override (replica/server/node.py, docs/replication.md).
    force_new_cluster: bool = False

    @property
    def initial_voters(self) -> tuple[int, ...]:
        return () if self.joined else tuple(r.index for r in self.cluster.replicas)

    @property
    def me(self) -> ReplicaAddress:
        return self.cluster.replica(self.index)

    @property
    def metrics_address(self) -> str | None:
        return self.metrics_override or self.me.metrics_address


def default_db_url(index: int, data_dir: Path) -> str:
    return f"sqlite:///{data_dir / f'replica-{index}.db'}"
