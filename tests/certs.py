"""Test certificates made with the openssl command line (the same steps as README.md's TLS
section), so no test depends on a Python crypto package."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from replica.config import TlsConfig

LOCAL_NAMES = ("IP:127.0.0.1", "DNS:localhost")
BOTH_USAGES = "serverAuth,clientAuth"


@dataclass(frozen=True)
class Authority:
    cert_file: Path
    key_file: Path


def require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_authority(directory: Path, name: str = "ca") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", authority.key_file, "-out", authority.cert_file, "-days", "30",
        "-subj", f"/CN=chat test {name}",
    )  # fmt: skip
    return authority


def issue(
    authority: Authority,
    directory: Path,
    name: str,
    names: Sequence[str] = LOCAL_NAMES,
    usages: str = BOTH_USAGES,
) -> tuple[Path, Path]:
    """A certificate (and its key) signed by `authority`, valid for `names`; (cert, key)."""
    cert, key, request = (directory / f"{name}.{ext}" for ext in ("pem", "key", "csr"))
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={','.join(names)}\nextendedKeyUsage={usages}\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", request, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", authority.cert_file, "-CAkey", authority.key_file,
        "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", extensions,
    )  # fmt: skip
    return cert, key


def cluster_tls(directory: Path) -> TlsConfig:
    """A CA and one certificate for every replica on 127.0.0.1."""
    authority = make_authority(directory)
    cert, key = issue(authority, directory, "replica")
    return TlsConfig(cert_file=cert, key_file=key, ca_file=authority.cert_file)
