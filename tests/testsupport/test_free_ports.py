"""The harness never hands out one port twice (two replicas of a cluster once got the same)."""

from __future__ import annotations

import pytest

from testsupport import harness
from testsupport.harness import free_port


def test_free_port_hands_out_each_port_once() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_port_the_os_offers_again_is_not_handed_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offered = iter([41_001, 41_001, 41_001, 41_002])

    class Socket:
        def __init__(self, *_args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

        def bind(self, _address: object) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("198.18.255.1", self.port)

    monkeypatch.setattr(harness.socket, "socket", Socket)
    host = "198.18.255.1"  # a name only: nothing is bound or sent
    assert harness.free_port(host) == 41_001
    assert harness.free_port(host) == 41_002
