"""Cluster settings that bound resources, and the durability override."""

from __future__ import annotations

from pathlib import Path

import pytest

from replica.config import ConfigError, load_cluster_config


def test_max_sessions_per_account_defaults_to_100_and_can_be_set(tmp_path: Path) -> None:
    assert load_cluster_config(None, env={}).max_sessions_per_account == 100
    path = tmp_path / "cluster.toml"
    path.write_text("max_sessions_per_account = 5\n")
    assert load_cluster_config(path, env={}).max_sessions_per_account == 5


def test_max_sessions_per_account_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("max_sessions_per_account = 0\n")
    with pytest.raises(ConfigError, match="max_sessions_per_account must be at least 1"):
        load_cluster_config(path, env={})


@pytest.mark.parametrize("name", ["max_in_flight_per_session", "max_subscriptions"])
def test_stream_limits_can_be_set_and_must_be_positive(tmp_path: Path, name: str) -> None:
    defaults = load_cluster_config(None, env={})
    assert (defaults.max_in_flight_per_session, defaults.max_subscriptions) == (64, 1000)
    path = tmp_path / "cluster.toml"
    path.write_text(f"{name} = 8\n")
    assert getattr(load_cluster_config(path, env={}), name) == 8
    path.write_text(f"{name} = 0\n")
    with pytest.raises(ConfigError, match=f"{name} must be at least 1"):
        load_cluster_config(path, env={})


def test_allow_unsafe_durability_is_off_by_default_and_takes_only_a_boolean(
    tmp_path: Path,
) -> None:
    assert load_cluster_config(None, env={}).allow_unsafe_durability is False
    path = tmp_path / "cluster.toml"
    path.write_text("allow_unsafe_durability = true\n")
    assert load_cluster_config(path, env={}).allow_unsafe_durability is True
    path.write_text("allow_unsafe_durability = 1\n")
    with pytest.raises(ConfigError, match="allow_unsafe_durability must be true or false"):
        load_cluster_config(path, env={})


def test_the_storage_timeout_defaults_to_twice_the_in_sync_timeout(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("insync_timeout_ms = 1500\n")
    assert load_cluster_config(path, env={}).effective_storage_timeout_ms == 3000
    path.write_text("insync_timeout_ms = 1500\nstorage_timeout_ms = 5000\n")
    assert load_cluster_config(path, env={}).effective_storage_timeout_ms == 5000
    path.write_text("storage_timeout_ms = -1\n")
    with pytest.raises(ConfigError, match="storage_timeout_ms"):
        load_cluster_config(path, env={})
    path.write_text("slow_storage_ms = 0\n")
    with pytest.raises(ConfigError, match="slow_storage_ms"):
        load_cluster_config(path, env={})
