"""Accounts for the load: registered and logged in through the public API, a few at a time
(each costs a server-side scrypt)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from client import ClientSettings
from client.library import ChatClient

PASSWORD = "bench-password"
SETUP_WORKERS = 4
# The ChatClient defaults, spelled out: the figures are what a default client sees.
CLIENT_TIMEOUT = 10.0
CLIENT_ATTEMPT_TIMEOUT = 3.0


def register(addresses: Sequence[str], names: Sequence[str]) -> None:
    def one(name: str) -> None:
        with ChatClient(addresses, ClientSettings(timeout=30.0)) as client:
            client.register(name, PASSWORD)

    with ThreadPoolExecutor(SETUP_WORKERS, thread_name_prefix="register") as pool:
        list(pool.map(one, names))


def logged_in_clients(
    addresses: Sequence[str], names: Sequence[str], *, session_stream: bool = True
) -> list[ChatClient]:
    """One ChatClient per name (default timeouts), logged in; the caller closes them.
    `session_stream`: sends go over each client's Session stream (the library's default), else
    unary calls."""

    def one(name: str) -> ChatClient:
        client = ChatClient(
            addresses,
            ClientSettings(
                timeout=CLIENT_TIMEOUT,
                attempt_timeout=CLIENT_ATTEMPT_TIMEOUT,
                session_stream=session_stream,
            ),
        )
        try:
            client.login(name, PASSWORD)
        except BaseException:
            client.close()
            raise
        return client

    with ThreadPoolExecutor(SETUP_WORKERS, thread_name_prefix="login") as pool:
        futures = [pool.submit(one, name) for name in names]
        clients: list[ChatClient] = []
        failure: BaseException | None = None
        for future in futures:
            try:
                clients.append(future.result())
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            for client in clients:
                client.close()
            raise failure
    return clients
