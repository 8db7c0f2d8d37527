"""The interactive chat: a prompt_toolkit prompt, with incoming messages printed above it."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from prompt_toolkit import PromptSession, print_formatted_text, prompt
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout

from client import (
    ChatClient,
    ChatError,
    ChatUnavailableError,
    ClientHooks,
    ClientSettings,
    LoginResult,
    Message,
    Subscription,
)
from client.cli.output import escape_field, status_table
from protos.wire import UNDELIVERED_COUNT_CAP

COMMANDS = (
    "/to",
    "/reply",
    "/msg",
    "/list",
    "/history",
    "/more",
    "/status",
    "/delete",
    "/help",
    "/quit",
)
HISTORY_LINES = 20

HELP = """\
/to USER          send plain lines to USER from now on (USER must exist)
/reply [TEXT]     answer whoever wrote to you last (and make them the recipient)
TEXT              send TEXT to the current recipient (start with // to send a leading /)
/msg USER TEXT    send TEXT to USER
/list [PATTERN]   list usernames, e.g. /list al*
/history [USER]   the newest messages exchanged with USER (default: the current recipient)
/more             the messages before those
/status           the replicas of the cluster
/delete           delete your account (asks for the password) and quit
/help             this text
/quit             log out and quit (Ctrl-D and Ctrl-C too)"""

Emit = Callable[[str], None]
Ask = Callable[[str], str]


class ChatShell:
    """Carries out one typed line at a time; everything it shows goes through `emit`."""

    def __init__(self, client: ChatClient, *, emit: Emit, ask_password: Ask) -> None:
        self._client = client
        self._emit = emit
        self._ask_password = ask_password
        self.recipient: str | None = None
        self.last_sender: str | None = None  # set by the receiver, for /reply
        self.known_users: list[str] = []
        self._older: tuple[str, Iterator[Message]] | None = None  # for /more

    def completions(self) -> list[str]:
        return [*COMMANDS, *self.known_users]

    def prompt_text(self) -> str:
        session = self._client.session
        me = session.username if session is not None else "?"
        return f"{me} -> {self.recipient}> " if self.recipient else f"{me}> "

    def handle(self, line: str) -> bool:
        """Runs one line; returns False when the user is done."""
        try:
            return self._dispatch(line.strip())
        except ChatError as error:
            self._emit(f"error: {error}")
            return True

    def _dispatch(self, line: str) -> bool:
        if not line:
            return True
        if not line.startswith("/") or line.startswith("//"):
            self._send_to_recipient(line.removeprefix("/"))
            return True
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        if command == "/quit":
            return False
        if command == "/delete":
            self._delete_account()
            return False
        if command == "/to" and argument:
            self._choose_recipient(argument)
        elif command == "/reply":
            if self.last_sender is None:
                self._emit("error: nobody has written to you yet")
                return True
            self.recipient = self.last_sender
            if argument:
                self._client.send(self.recipient, argument)
        elif command == "/msg" and len(argument.split(maxsplit=1)) == 2:
            recipient, text = argument.split(maxsplit=1)
            self._client.send(recipient, text)
        elif command == "/list":
            self.known_users = list(self._client.list_accounts(argument))
            self._emit("\n".join(self.known_users) or "(no matching accounts)")
        elif command == "/history" and (argument or self.recipient):
            self._show_history(argument or self.recipient or "")
        elif command == "/more":
            self._show_older("(no older messages)")
        elif command == "/status":
            self._emit(status_table(self._client.cluster_status()))
        elif command == "/help":
            self._emit(HELP)
        elif command in COMMANDS:
            self._emit(f"error: {command} needs more; /help shows how")
        else:
            self._emit(f"error: unknown command {command}; /help lists them")
        return True

    def _choose_recipient(self, name: str) -> None:
        """Only an existing user: a typo is caught now, not at the first send."""
        wanted = name.strip().lower()
        if any(c in wanted for c in "*?[") or wanted not in self._client.list_accounts(wanted):
            self._emit(f"error: there is no user {name!r}; /list shows who there is")
            return
        self.recipient = wanted

    def _send_to_recipient(self, text: str) -> None:
        if self.recipient is None:
            self._emit("error: no recipient yet; choose one with /to USER")
        else:
            self._client.send(self.recipient, text)

    def _show_history(self, other_user: str) -> None:
        """The newest HISTORY_LINES messages with `other_user`, oldest first; `/more` shows
        the ones before (each a page read only then: any length of history costs a page)."""
        older = self._client.history(other_user, page_size=HISTORY_LINES, newest_first=True)
        self._older = (other_user, older)
        self._show_older(f"(no messages with {other_user})")

    def _show_older(self, empty: str) -> None:
        if self._older is None:
            self._emit("(nothing more: /history USER first)")
            return
        other_user, older = self._older
        page = list(itertools.islice(older, HISTORY_LINES))
        if len(page) < HISTORY_LINES:
            self._older = None
        lines = [
            f"[{local_time(message)}] #{message.message_id} {message.sender} ->"
            f" {message.recipient}: {displayed(message.body)}"
            for message in reversed(page)
        ]
        if self._older is not None:
            lines.insert(0, f"(older messages with {other_user}: /more)")
        self._emit("\n".join(lines) or empty)

    def _delete_account(self) -> None:
        password = self._ask_password("password, to confirm deleting your account: ")
        self._client.delete_account(password)
        self._emit("account deleted")


def run_interactive(
    servers: Sequence[str], *, timeout: float, root_certificates: bytes | None = None
) -> int:
    with ChatClient(
        servers,
        ClientSettings(timeout=timeout, root_certificates=root_certificates),
        hooks=ClientHooks(
            on_replica_change=_announce_replica,
            on_unreachable=lambda text: _emit(f"reconnecting... ({text})"),
        ),
    ) as client:
        try:
            login = log_in(client, ask=prompt, ask_password=_ask_password, emit=_emit)
        except (KeyboardInterrupt, EOFError):
            return 0
        unread = login.undelivered_count
        shown = f"more than {UNDELIVERED_COUNT_CAP:,}" if unread > UNDELIVERED_COUNT_CAP else unread
        _emit(
            f"logged in as {login.username}; {shown} unread message(s)"
            + unread_summary(login.unread_by_sender)
            + ". /help lists the commands."
        )
        shell = ChatShell(client, emit=_emit, ask_password=_ask_password)
        subscription = client.subscribe(reconnect_timeout=math.inf)
        session: PromptSession[str] = PromptSession(
            completer=WordCompleter(shell.completions, WORD=True)
        )

        def lost() -> None:  # from the receiver thread: end the prompt as Ctrl-D would
            app = session.app
            if app.is_running and app.loop is not None:
                app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

        receiver = threading.Thread(
            target=receive,
            args=(client, subscription, _emit, shell, lost),
            name="receiver",
            daemon=True,
        )
        with patch_stdout():
            receiver.start()
            try:
                while shell.handle(_next_line(session, shell)):
                    pass
            except (KeyboardInterrupt, EOFError):
                pass
            finally:
                subscription.cancel()
                receiver.join(timeout=2.0)
        if client.session is not None:
            try:
                client.logout()
            except ChatError as error:
                _emit(f"error: could not log out: {error}")
    return 0


def log_in(client: ChatClient, *, ask: Ask, ask_password: Ask, emit: Emit) -> LoginResult:
    """Asks for credentials until a login works, offering to register an unknown user.

    ChatUnavailableError (no cluster) is not retried here: it ends the program.
    """
    emit("log in, or type /register NAME to create an account")
    while True:
        username = ask("username: ").strip()
        if not username:
            continue
        command, _, name = username.partition(" ")
        if command == "/register":
            if not name.strip():
                emit("error: /register needs a name, e.g. /register alice")
                continue
            registered = _register(
                client, name.strip(), ask_password("password: "), ask_password, emit
            )
            if registered is not None:
                return registered
            continue
        password = ask_password("password: ")
        try:
            return client.login(username, password)
        except ChatUnavailableError:
            raise
        except ChatError as error:
            if error.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                emit(f"error: {error}")
                continue
        # Usernames are public (ListAccounts): an existing one gets no offer to register.
        name = username.strip().lower()
        if any(c in name for c in "*?[") or name in client.list_accounts(name):
            emit("error: wrong username or password")
            continue
        emit(f"there is no account {name!r} yet")
        answer = ask(f'register "{username}" as a new account? [y/N] ')
        if answer.strip().lower() in ("y", "yes"):
            registered = _register(client, username, password, ask_password, emit)
            if registered is not None:
                return registered


def _register(
    client: ChatClient, username: str, password: str, ask_password: Ask, emit: Emit
) -> LoginResult | None:
    if ask_password("repeat the password: ") != password:
        emit("error: the passwords differ")
        return None
    try:
        emit(f"registered {client.register(username, password)}")
        return client.login(username, password)
    except ChatUnavailableError:
        raise
    except ChatError as error:
        emit(f"error: {error}")
        return None


def receive(
    client: ChatClient,
    subscription: Subscription,
    emit: Emit,
    shell: ChatShell | None = None,
    on_lost: Callable[[], None] = lambda: None,
) -> None:
    """Prints each incoming message (with its local time), then acks it; runs until the
    subscription ends. If it breaks beyond repair, says so and calls `on_lost` (which ends
    the session: a chat that no longer receives must not look alive)."""
    try:
        for item in subscription:
            if not isinstance(item, Message):
                continue
            if shell is not None:
                shell.last_sender = item.sender
            emit(f"[{local_time(item)}] <{item.sender}> {displayed(item.body)}")
            try:
                client.ack([item.message_id])
            except ChatError as error:
                emit(f"error: could not acknowledge message {item.message_id}: {error}")
    except ChatError as error:
        reason = " ".join(str(error).split())  # one line, whatever the server said
        emit(f"error: no longer receiving messages ({reason}); quitting")
        on_lost()


def unread_summary(by_sender: Sequence[tuple[str, int]], shown: int = 5) -> str:
    """(alice 3, bob 1, and 2 more senders)" -- or nothing when there is nothing unread."""
    if not by_sender:
        return ""
    parts = [f"{escape_field(sender)} {count}" for sender, count in by_sender[:shown]]
    if len(by_sender) > shown:
        parts.append(f"and {len(by_sender) - shown} more senders")
    return " (" + ", ".join(parts) + ")"


def local_time(message: Message) -> str:
    """When the message was committed, in this machine's time zone (HH:MM:SS; with the date
    when it is not today)."""
    when = dt.datetime.fromtimestamp(message.sent_at_unix_ms / 1000).astimezone()
    if when.date() == dt.datetime.now().astimezone().date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def displayed(text: str) -> str:
    """Message text as shown: control characters (but newlines) escaped, so that no message
    can drive the terminal (see client/cli/output.py)."""
    return "\n".join(escape_field(line) for line in text.split("\n"))


def _next_line(session: PromptSession[str], shell: ChatShell) -> str:
    if colour_wanted():  # your own lines: the prompt in green
        return session.prompt(FormattedText([("ansigreen", shell.prompt_text())]))
    return session.prompt(shell.prompt_text())


def _ask_password(text: str) -> str:
    # A separate prompt keeps passwords out of the chat prompt's history.
    return prompt(text, is_password=True)


def _announce_replica(address: str) -> None:
    _emit(f"-- connected to replica at {address}")


def colour_wanted(stream: Any = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Colours only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if "NO_COLOR" in environ or environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


_INCOMING = re.compile(r"^\[[^\]]+\] <")


def style_of(text: str) -> str:
    """The prompt_toolkit style of a line: errors red, incoming messages cyan, the client's
    own notices (connection changes) yellow, the rest as the terminal has it."""
    if text.startswith("error:"):
        return "ansired"
    if _INCOMING.match(text):
        return "ansicyan"
    if text.startswith(("-- ", "reconnecting")):
        return "ansiyellow"
    return ""


def _emit(text: str) -> None:
    if colour_wanted():
        print_formatted_text(FormattedText([(style_of(text), text)]))
    else:
        print(text, flush=True)
