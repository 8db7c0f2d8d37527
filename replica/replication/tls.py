"""TLS for every connection, when the cluster config has a [tls] table.

Clients reach a replica's `address` over TLS with the server's certificate only. Replicas
reach each other's `peer_address` over mutual TLS: that port requires a client certificate
signed by ca_file, and the Replication service accepts only calls that came in with one (on top
of the cluster secret). Two ports, because gRPC Python either requires a client certificate on
a whole port or never asks for one.

The files are checked when a replica starts, so a wrong path, a key that does not match its
certificate, a certificate the CA did not sign (or that has expired) or one not valid for the
replica's own host is one line at startup instead of peers that silently cannot connect.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from replica.config import ConfigError, ReplicaAddress, TlsConfig

# Set by gRPC in a call's auth context when the peer presented a certificate that gRPC verified
# (only possible on the peer port, the one that requires it).
PEER_CERTIFICATE_KEY = "x509_pem_cert"

_HANDSHAKE_ROUNDS = 20


@dataclass(frozen=True)
class TlsMaterial:
    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes

    def client_port_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)])

    def peer_port_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=True,
        )

    def peer_channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def load_tls_material(config: TlsConfig, me: ReplicaAddress) -> TlsMaterial:
    """Reads and checks the files; ConfigError (one line) says what is wrong."""
    material = TlsMaterial(
        certificate_chain=_read_pem(config.cert_file, "cert_file", b"CERTIFICATE-----"),
        private_key=_read_pem(config.key_file, "key_file", b"PRIVATE KEY-----"),
        root_certificates=_read_pem(config.ca_file, "ca_file", b"CERTIFICATE-----"),
    )
    server, client = _contexts(config)
    hosts = _hosts(me.listen_addresses)
    _handshake(server, client, None, config)
    for host in hosts:
        _handshake(server, client, host, config)
    return material


def _read_pem(path: Path, setting: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls {setting} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        kind = "private key" if setting == "key_file" else "certificate"
        raise ConfigError(f"tls {setting} {path} is not a PEM {kind}")
    return data


def _contexts(config: TlsConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context that both present the certificate and both require the
    other's to be signed by the CA, as two replicas do."""
    contexts = []
    for side in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        context = ssl.SSLContext(side)
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"tls key_file {config.key_file} does not belong to cert_file "
                f"{config.cert_file} ({exc.reason or exc})"
            ) from None
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"tls ca_file {config.ca_file} holds no usable certificate ({exc.reason or exc})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
        contexts.append(context)
    return contexts[0], contexts[1]


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, host: str | None, config: TlsConfig
) -> None:
    """A TLS handshake in memory between the two contexts; with `host`, the client also checks
    that the certificate is valid for it."""
    client.check_hostname = host is not None
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_hostname=host)
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    try:
        for _ in range(_HANDSHAKE_ROUNDS):
            for name, end in (("client", client_end), ("server", server_end)):
                if not done[name]:
                    try:
                        end.do_handshake()
                        done[name] = True
                    except ssl.SSLWantReadError:
                        pass
            if all(done.values()):
                return
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "purpose" in reason:
            reason += " (replicas also present it as a client certificate: its "
            reason += "extendedKeyUsage needs both serverAuth and clientAuth)"
        if host is not None and "mismatch" in reason.lower():
            raise ConfigError(
                f"tls cert_file {config.cert_file} is not valid for {host}, this replica's "
                "host: add it to the certificate's subjectAltName"
            ) from None
        raise ConfigError(
            f"tls cert_file {config.cert_file} is not accepted under ca_file "
            f"{config.ca_file}: {reason}"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls cert_file {config.cert_file} cannot be used for TLS between replicas "
            f"({exc.reason or exc})"
        ) from None
    raise ConfigError(f"tls cert_file {config.cert_file}: the TLS self-check did not finish")


def _hosts(addresses: Iterable[str]) -> list[str]:
    """The hosts clients and peers dial, without wildcard listen addresses."""
    hosts = []
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]")
        try:
            if ipaddress.ip_address(host).is_unspecified:
                continue
        except ValueError:
            pass  # a name
        if host and host not in hosts:
            hosts.append(host)
    return hosts
