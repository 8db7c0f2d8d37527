"""The [tls] table, peer_address and CHAT_TLS_* overrides (replica/config.py), and the checks
replica/replication/tls.py makes of the files before a replica starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replica.config import ConfigError, ReplicaAddress, TlsConfig, load_cluster_config
from replica.replication.tls import load_tls_material
from tests.certs import cluster_tls, issue, make_authority, require_openssl

REPLICAS = """
[[replicas]]
index = 0
address = "127.0.0.1:50051"
peer_address = "127.0.0.1:50061"

[[replicas]]
index = 1
address = "127.0.0.1:50052"
peer_address = "127.0.0.1:50062"
"""

TLS_TABLE = """
[tls]
cert_file = "certs/replica.pem"
key_file = "/etc/chat/replica.key"
ca_file = "certs/ca.pem"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "cluster.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    return load_cluster_config(write(tmp_path, text), env or {})


def test_tls_is_off_by_default_and_one_port_is_served(tmp_path: Path) -> None:
    config = load_cluster_config(None, {})
    assert config.tls is None
    assert [r.listen_addresses for r in config.replicas] == [
        ("127.0.0.1:50051",),
        ("127.0.0.1:50052",),
        ("127.0.0.1:50053",),
    ]
    assert load_cluster_config(write(tmp_path, 'cluster_secret = "s"\n'), {}).tls is None


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, TLS_TABLE + REPLICAS), {})
    conf_dir = tmp_path / "conf"
    assert config.tls == TlsConfig(
        cert_file=conf_dir / "certs" / "replica.pem",
        key_file=Path("/etc/chat/replica.key"),
        ca_file=conf_dir / "certs" / "ca.pem",
    )
    replica = config.replica(1)
    assert replica.replication_address == "127.0.0.1:50062"
    assert replica.listen_addresses == ("127.0.0.1:50052", "127.0.0.1:50062")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('tls = "on"\n', "tls must be a table"),
        ('[tls]\ncert_file = "a"\nkey_file = "b"\n', "[tls] needs ca_file"),
        ('[tls]\ncert_file = "a"\n', "[tls] needs key_file, ca_file"),
        (TLS_TABLE + 'verify = "yes"\n', "unknown setting 'verify' in [tls]"),
        ('[tls]\ncert_file = 1\nkey_file = "b"\nca_file = "c"\n', "cert_file must be a file path"),
        ('[tls]\ncert_file = ""\nkey_file = "b"\nca_file = "c"\n', "cert_file must be a file path"),
    ],
)
def test_a_malformed_tls_table_is_a_config_error(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, table + REPLICAS)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_with_tls_every_replica_needs_its_own_peer_address(tmp_path: Path) -> None:
    without = REPLICAS.replace('peer_address = "127.0.0.1:50062"\n', "")
    with pytest.raises(ConfigError, match="replica 1 needs a peer_address"):
        load(tmp_path, TLS_TABLE + without)
    clash = REPLICAS.replace("127.0.0.1:50062", "127.0.0.1:50051")
    with pytest.raises(
        ConfigError, match=re.escape("replica 1's peer_address 127.0.0.1:50051 must differ")
    ):
        load(tmp_path, TLS_TABLE + clash)
    twice = REPLICAS.replace("127.0.0.1:50062", "127.0.0.1:50061")
    with pytest.raises(ConfigError, match="must differ"):
        load(tmp_path, TLS_TABLE + twice)


def test_without_tls_a_peer_address_is_optional(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, REPLICAS.replace("peer_address", "#")), {})
    assert config.replica(0) == ReplicaAddress(0, "127.0.0.1:50051")
    assert config.replica(0).replication_address == "127.0.0.1:50051"


def test_environment_turns_tls_on_or_replaces_single_files(tmp_path: Path) -> None:
    env = {
        "CHAT_TLS_CERT_FILE": "host.pem",
        "CHAT_TLS_KEY_FILE": "/keys/host.key",
        "CHAT_TLS_CA_FILE": "ca.pem",
    }
    config = load_cluster_config(write(tmp_path, REPLICAS), env)
    assert config.tls == TlsConfig(Path("host.pem"), Path("/keys/host.key"), Path("ca.pem"))

    # One host's own certificate over the cluster's shared one.
    config = load_cluster_config(
        write(tmp_path, TLS_TABLE + REPLICAS), {"CHAT_TLS_CERT_FILE": "/own/cert.pem"}
    )
    assert config.tls is not None
    assert config.tls.cert_file == Path("/own/cert.pem")
    assert config.tls.ca_file == tmp_path / "conf" / "certs" / "ca.pem"


def test_environment_alone_needs_all_three_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_cluster_config(write(tmp_path, REPLICAS), {"CHAT_TLS_CA_FILE": "ca.pem"})
    assert "set CHAT_TLS_CERT_FILE, CHAT_TLS_KEY_FILE too" in str(error.value)


def test_environment_tls_still_needs_peer_addresses() -> None:
    env = {"CHAT_TLS_CERT_FILE": "a", "CHAT_TLS_KEY_FILE": "b", "CHAT_TLS_CA_FILE": "c"}
    with pytest.raises(ConfigError, match="replica 0 needs a peer_address"):
        load_cluster_config(None, env)


# -- the files themselves ---------------------------------------------------------------------

ME = ReplicaAddress(0, "127.0.0.1:50051", peer_address="localhost:50061")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    require_openssl()
    return cluster_tls(tmp_path_factory.mktemp("tls"))


def test_good_files_are_loaded(files: TlsConfig) -> None:
    material = load_tls_material(files, ME)
    assert material.certificate_chain == files.cert_file.read_bytes()
    assert material.private_key == files.key_file.read_bytes()
    assert material.root_certificates == files.ca_file.read_bytes()
    # A wildcard listen address names no host to check.
    load_tls_material(files, ReplicaAddress(0, "0.0.0.0:50051", peer_address="[::]:50061"))


def test_a_missing_or_non_pem_file_is_named(files: TlsConfig, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=re.escape(f"tls key_file {missing}: No such file")):
        load_tls_material(TlsConfig(files.cert_file, missing, files.ca_file), ME)
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        load_tls_material(TlsConfig(files.key_file, files.key_file, files.ca_file), ME)
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_tls_material(TlsConfig(files.cert_file, files.cert_file, files.ca_file), ME)


def test_a_key_of_another_certificate_is_refused(files: TlsConfig, tmp_path: Path) -> None:
    _, other_key = issue(make_authority(tmp_path), tmp_path, "other")
    with pytest.raises(ConfigError, match="does not belong to cert_file"):
        load_tls_material(TlsConfig(files.cert_file, other_key, files.ca_file), ME)


def test_a_certificate_from_another_ca_is_refused(files: TlsConfig, tmp_path: Path) -> None:
    other_ca = make_authority(tmp_path, "other-ca")
    with pytest.raises(ConfigError, match="is not accepted under ca_file") as error:
        load_tls_material(TlsConfig(files.cert_file, files.key_file, other_ca.cert_file), ME)
    assert "unable to get local issuer certificate" in str(error.value)


def test_a_server_only_certificate_is_refused(files: TlsConfig, tmp_path: Path) -> None:
    authority = make_authority(tmp_path)
    cert, key = issue(authority, tmp_path, "server-only", usages="serverAuth")
    with pytest.raises(ConfigError, match="needs both serverAuth and clientAuth"):
        load_tls_material(TlsConfig(cert, key, authority.cert_file), ME)


def test_a_certificate_must_name_the_replicas_own_hosts(files: TlsConfig) -> None:
    elsewhere = ReplicaAddress(0, "127.0.0.1:50051", peer_address="replica0.example:50061")
    with pytest.raises(ConfigError, match=r"not valid for replica0\.example, this replica's host"):
        load_tls_material(files, elsewhere)
    with pytest.raises(ConfigError, match=r"not valid for 127\.0\.0\.2"):
        load_tls_material(files, ReplicaAddress(0, "127.0.0.2:50051"))
