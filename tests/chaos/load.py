"""The chaos runs' load: concurrent senders (as tests/integration's Senders) whose clients
follow the membership. A client knows the replicas it was given and any primary they name; once
every one it was given is removed, nothing names the new ones -- so each sender opens a new
client on the members' addresses (and logs in again) whenever the membership changes, between
two sends."""

from __future__ import annotations

from collections.abc import Callable

from client import ClientSettings
from client.errors import ChatError
from client.library import ChatClient
from tests.integration.cluster_checks import PASSWORD, SenderThreads

LOGIN_RETRY_PAUSE = 0.2


class FollowingSenders(SenderThreads):
    """`senders` threads, each logged in as its own user, sending numbered messages to
    `recipient` until stopped, through clients on `addresses()` (asked before each send).
    Every send that returned is recorded as acknowledged, every one that raised as failed."""

    def __init__(
        self,
        addresses: Callable[[], list[str]],
        senders: list[str],
        recipient: str,
        timeout: float = 20.0,
    ) -> None:
        super().__init__(senders, recipient, timeout)
        self._addresses = addresses
        self.reconnects = 0  # clients opened again on a new membership

    def _client(self, user: str, addresses: list[str]) -> ChatClient | None:
        client = ChatClient(addresses, ClientSettings(timeout=self._timeout))
        try:
            client.login(user, PASSWORD)
        except ChatError:
            client.close()
            return None
        return client

    def _run(self, user: str) -> None:
        client: ChatClient | None = None
        given: list[str] = []
        n = 0
        try:
            while not self._stop.is_set():
                addresses = self._addresses()
                if client is None or addresses != given:
                    if client is not None:
                        client.close()
                        with self.log.lock:
                            self.reconnects += 1
                    given = addresses
                    client = self._client(user, addresses)
                    if client is None:  # (no primary to log in on yet)
                        self._stop.wait(LOGIN_RETRY_PAUSE)
                        continue
                n += 1
                self._send(client, f"{user}#{n}")
        except BaseException as exc:  # reported by stop()
            self._errors.append(exc)
        finally:
            if client is not None:
                client.close()
