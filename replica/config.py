"""Cluster configuration: one TOML file, overridden by CLI flags and CHAT_* variables.

cluster_secret = "..."          # or CHAT_CLUSTER_SECRET; default: data_dir/cluster.secret
heartbeat_interval_ms = 100
peer_timeout_ms = 600           # a peer silent this long is considered dead
insync_timeout_ms = 1000        # a secondary this far behind leaves the in-sync set
min_insync = 1
[[replicas]]
index = 0
address = "127.0.0.1:50051"
db = "sqlite:///data/replica-0.db"   # optional
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ReplicaAddress:
    index: int
    address: str
    db: str | None = None


DEFAULT_REPLICAS = (
    ReplicaAddress(0, "127.0.0.1:50051"),
    ReplicaAddress(1, "127.0.0.1:50052"),
    ReplicaAddress(2, "127.0.0.1:50053"),
)


@dataclass(frozen=True)
class ClusterConfig:
    replicas: tuple[ReplicaAddress, ...] = DEFAULT_REPLICAS
    cluster_secret: str | None = None
    heartbeat_interval_ms: int = 100
    peer_timeout_ms: int = 600
    insync_timeout_ms: int = 1000
    min_insync: int = 1
    max_subscriptions: int = 1000
    extra: Mapping[str, Any] = field(default_factory=dict)

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
    return config


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None


def _from_mapping(data: Mapping[str, Any], source: str) -> ClusterConfig:
    known = {f for f in ClusterConfig.__dataclass_fields__ if f not in ("replicas", "extra")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "replicas":
            continue
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        kwargs[key] = value if key == "cluster_secret" else _int(value, key)
    replicas = data.get("replicas")
    if replicas is not None:
        if not isinstance(replicas, list) or not replicas:
            raise ConfigError(f"{source}: [[replicas]] must list at least one replica")
        parsed = []
        for entry in replicas:
            if "index" not in entry or "address" not in entry:
                raise ConfigError(f"{source}: every [[replicas]] entry needs index and address")
            parsed.append(
                ReplicaAddress(
                    _int(entry["index"], "index"), str(entry["address"]), entry.get("db")
                )
            )
        if len({r.index for r in parsed}) != len(parsed):
            raise ConfigError(f"{source}: replica indexes must be distinct")
        kwargs["replicas"] = tuple(sorted(parsed, key=lambda r: r.index))
    config = ClusterConfig(**kwargs)
    if config.min_insync < 1 or config.min_insync > len(config.replicas):
        raise ConfigError(f"{source}: min_insync must be between 1 and {len(config.replicas)}")
    return config


def resolve_cluster_secret(config: ClusterConfig, data_dir: Path) -> bytes:
    """The configured secret, or one shared by every replica using this data directory (made
    on first start), so a single machine needs no setup."""
    if config.cluster_secret:
        return config.cluster_secret.encode("utf-8")
    data_dir.mkdir(parents=True, exist_ok=True)
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

    @property
    def me(self) -> ReplicaAddress:
        return self.cluster.replica(self.index)


def default_db_url(index: int, data_dir: Path) -> str:
    return f"sqlite:///{data_dir / f'replica-{index}.db'}"
