"""`python -m client`: scriptable subcommands, or an interactive chat without one."""

from __future__ import annotations

import argparse
import getpass
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from client import (
    AdminClient,
    ChatClient,
    ChatError,
    ClientHooks,
    ClientSettings,
    Message,
    PermissionDenied,
    Unauthenticated,
)
from client.cli.output import (
    escape_field,
    history_line,
    inbox_line,
    member_added_line,
    member_promoted_line,
    member_removed_line,
    members_table,
    status_table,
)
from protos.wire import MAX_ACK_IDS, MAX_PAGE_SIZE

logger = logging.getLogger(__name__)

DEFAULT_SERVERS = ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053")
SERVERS_ENV = "CHAT_SERVERS"
PASSWORD_ENV = "CHAT_PASSWORD"
TLS_CA_ENV = "CHAT_TLS_CA"
CLUSTER_SECRET_ENV = "CHAT_CLUSTER_SECRET"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command line: printed as one line, exit status 2."""


class CliError(Exception):
    """A failure outside the service (e.g. no password to be had): exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments: the options every command takes, then the commands."""
    parser = _Parser(
        prog=_prog(),
        description="Chat client. Without a command: an interactive chat.",
        epilog=f"Passwords come from ${PASSWORD_ENV} or a prompt.",
    )
    _add_global_options(parser)
    _add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--servers",
        help=f"comma-separated host:port of every replica (default: ${SERVERS_ENV} or "
        f"{','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up on a request after this long without an answer from the primary",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help=f"talk TLS, trusting the replicas' certificates signed by this CA (PEM; default: "
        f"${TLS_CA_ENV}; without either, plaintext)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log failover on stderr")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no confirming line (register, send, delete-account, admin member changes);"
        " data still prints",
    )


def _add_commands(commands: Any) -> None:
    """One subparser per command (`commands`: argparse's subparsers action)."""

    register = commands.add_parser(
        "register",
        help="create an account",
        description="Create an account; prints its canonical (lower-case) name.",
    )
    register.add_argument("user", help="1-32 characters from a-z 0-9 _ . - (case-insensitive)")

    send = commands.add_parser(
        "send",
        help="send a message",
        description="Send one message; prints its message id once every in-sync replica holds"
        " it. Retried after a failover with the same request id: sent exactly once.",
    )
    send.add_argument("--user", required=True, help="who sends it (logs in with the password)")
    send.add_argument("--to", required=True, metavar="USER", help="the recipient")
    send.add_argument("text", help="the message: 1 to 4096 bytes of UTF-8, not only blanks")

    read = commands.add_parser(
        "read",
        help="print and acknowledge undelivered messages",
        description="Print undelivered messages as ID<TAB>SENT_AT<TAB>SENDER<TAB>TEXT (SENT_AT"
        " in ISO 8601 UTC; tab, newline and backslash in TEXT as \\t \\n \\\\, other control"
        " characters as \\xNN), acknowledging them as they print.",
    )
    read.add_argument("--user", required=True, help="whose inbox (logs in with the password)")
    read.add_argument(
        "--wait",
        type=_non_negative_seconds,
        metavar="SECONDS",
        help="after catching up, keep printing new messages this long",
    )

    accounts = commands.add_parser(
        "list", help="list usernames", description="List usernames matching a pattern, sorted."
    )
    accounts.add_argument("pattern", nargs="?", default="", help="shell-style, e.g. 'al*'")

    history = commands.add_parser(
        "history",
        help="messages exchanged with another user",
        description="Print the conversation as ID<TAB>SENT_AT<TAB>SENDER<TAB>RECIPIENT<TAB>TEXT"
        " (escaped as by read), oldest first, page by page as it comes.",
    )
    history.add_argument("--user", required=True, help="you (logs in with the password)")
    history.add_argument(
        "--with", dest="other_user", required=True, metavar="USER", help="the other user"
    )
    history.add_argument("--newest-first", action="store_true", help="from the newest message back")
    history.add_argument(
        "--last", type=_positive_int, metavar="N", help="only the newest N messages (oldest first)"
    )

    delete = commands.add_parser(
        "delete-account",
        help="delete an account",
        description="Delete an account, its sessions and every message it received; the"
        " password confirms it.",
    )
    delete.add_argument("--user", required=True, help="the account to delete")

    commands.add_parser(
        "status",
        help="show the replicas",
        description="Each replica's role, epoch, seqs, lag and in-sync state, as the replica"
        " that answers sees them; '-' where it does not know.",
    )

    _add_admin_commands(commands)


def _add_admin_commands(commands: Any) -> None:
    """`admin member list|add|promote|remove`: the operator's, with the cluster secret."""
    admin = commands.add_parser(
        "admin",
        help="administer the cluster (needs the cluster secret)",
        description=f"Operator commands; each needs the replicas' cluster secret: "
        f"${CLUSTER_SECRET_ENV} or --cluster-secret-file FILE.",
    )
    admin_commands = admin.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    member = admin_commands.add_parser(
        "member",
        help="list, add, promote or remove replicas",
        description="The cluster's replicas: a new one joins as a learner (it catches up and"
        " counts for nothing), is promoted to voter once caught up, and a removed one's index"
        " is never used again. One change at a time.",
    )
    members = member.add_subparsers(dest="member_command", metavar="COMMAND", required=True)
    # (On each command rather than on `admin`, so that it may come anywhere after it.)
    secret = _Parser(add_help=False)
    secret.add_argument(
        "--cluster-secret-file",
        metavar="FILE",
        help=f"read the cluster secret from FILE, e.g. a replica's DATA_DIR/cluster.secret "
        f"(default: ${CLUSTER_SECRET_ENV})",
    )
    members.add_parser(
        "list",
        parents=[secret],
        help="show the members",
        description="Each member's address, voter or learner, role, in-sync state, lag,"
        " reachability and epoch, as the replica that answers sees them ('-' where it does not"
        " know); whether a change is in progress; the removed indexes.",
    )
    add = members.add_parser(
        "add",
        parents=[secret],
        help="add a replica as a learner",
        description="Add replica N as a learner; start it with `python -m replica --index N"
        " --address H:P --join ...`, and promote it once it has caught up.",
    )
    add.add_argument("--index", required=True, type=_member_index, metavar="N", help="a new index")
    add.add_argument(
        "--address", required=True, type=_address, metavar="H:P", help="where clients reach it"
    )
    add.add_argument(
        "--peer-address",
        type=_address,
        metavar="H:P",
        help="where replicas reach it (default: --address; required in a TLS cluster)",
    )
    promote = members.add_parser(
        "promote",
        parents=[secret],
        help="make a caught-up learner a voter",
        description="Make learner N a voter; refused while it lags the log's end.",
    )
    promote.add_argument("index", type=_member_index, metavar="N", help="the learner's index")
    remove = members.add_parser(
        "remove",
        parents=[secret],
        help="remove a replica for good",
        description="Remove replica N (voter or learner) for good: its index is never used"
        " again, and its process stops by itself once it hears of the removal.",
    )
    remove.add_argument("index", type=_member_index, metavar="N", help="the replica's index")


def _prog() -> str:
    """The CLI's name as typed: the `chat` console script, or python -m client."""
    return "chat" if os.path.basename(sys.argv[0]) == "chat" else "python -m client"


def parse_servers(text: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not servers:
        raise UsageError("no servers given")
    for server in servers:
        if not _is_host_port(server):
            raise UsageError(f"server address {server!r} is not host:port")
    return servers


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        servers = parse_servers(
            args.servers or environ.get(SERVERS_ENV) or ",".join(DEFAULT_SERVERS)
        )
    except UsageError as error:
        return _fail(str(error), EXIT_USAGE)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args, servers, environ)
    except ChatError as error:
        return _fail(str(error))
    except CliError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except BrokenPipeError:
        # stdout was closed early (e.g. `| head`); nothing more can be printed there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as error:  # the one-line promise holds for our own bugs too
        logger.debug("unexpected failure", exc_info=True)
        return _fail(f"unexpected {type(error).__name__}: {error}")


def _run(args: argparse.Namespace, servers: Sequence[str], environ: Mapping[str, str]) -> int:
    command: str | None = args.command
    root_certificates = _tls_ca(args.tls_ca or environ.get(TLS_CA_ENV))
    if command is None:
        from client.cli.interactive import run_interactive

        return run_interactive(servers, timeout=args.timeout, root_certificates=root_certificates)
    # One request and out: a Session stream would only add its `open` and a reader thread.
    settings = ClientSettings(
        timeout=args.timeout, root_certificates=root_certificates, session_stream=False
    )
    hooks = ClientHooks(on_unreachable=_say_unreachable)
    if command == "admin":
        _run_admin(args, servers, settings, hooks, environ)
        return EXIT_OK
    with ChatClient(servers, settings, hooks=hooks) as client:
        _COMMANDS[command](client, args, lambda prompt: _password(prompt, environ))
    return EXIT_OK


def _run_admin(
    args: argparse.Namespace,
    servers: Sequence[str],
    settings: ClientSettings,
    hooks: ClientHooks,
    environ: Mapping[str, str],
) -> None:
    secret, source = _cluster_secret(args.cluster_secret_file, environ)
    try:
        admin = AdminClient(servers, secret, settings, hooks=hooks)
    except ValueError as error:  # (a secret gRPC metadata cannot carry)
        raise CliError(str(error)) from None
    with admin:
        try:
            _MEMBER_COMMANDS[args.member_command](admin, args)
        except (Unauthenticated, PermissionDenied) as error:
            raise CliError(
                f"{error}; check the cluster secret (this one came from {source})"
            ) from None


def _cluster_secret(path: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """The secret and where it came from: `path` if given (stripped of surrounding whitespace,
    as a replica reads its cluster.secret file), else the environment (as is, as a replica
    reads it)."""
    if path is None:
        secret = environ.get(CLUSTER_SECRET_ENV, "")
        if not secret:
            raise CliError(
                f"no cluster secret: set {CLUSTER_SECRET_ENV} or give --cluster-secret-file FILE"
            )
        return secret, CLUSTER_SECRET_ENV
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as error:
        raise CliError(f"cannot read the cluster secret file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"the cluster secret file {path} is not UTF-8 text") from None
    if not secret:
        raise CliError(f"the cluster secret file {path} is empty")
    return secret, f"--cluster-secret-file {path}"


PasswordSource = Callable[[str], str]


def _say_unreachable(text: str) -> None:
    """A person waiting at a terminal learns at once why nothing happens; a script's stderr
    keeps its one line (the final error, if it comes to that)."""
    if sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


def _tls_ca(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as error:
        raise CliError(f"cannot read the TLS CA file {path}: {error.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CliError(f"the TLS CA file {path} holds no PEM certificate")
    return pem


def _register(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    name = client.register(args.user, password(f"Password for new user {args.user}: "))
    if not args.quiet:
        print(name)


def _send(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    with _logged_in(client, args.user, password):
        message_id = client.send(args.to, args.text)
    if not args.quiet:
        print(message_id)


def _read(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    wait: float | None = args.wait
    with _logged_in(client, args.user, password):
        subscription = client.subscribe()
        caught_up = False
        unacked: list[int] = []
        stop_timer: threading.Timer | None = None
        try:
            for item in subscription:
                if isinstance(item, Message):
                    print(inbox_line(item), flush=True)
                    unacked.append(item.message_id)
                    if not caught_up and len(unacked) < MAX_ACK_IDS:
                        continue  # the backlog is acked a full request at a time as it prints
                elif not caught_up:
                    caught_up = True
                    if wait is None:
                        break
                    stop_timer = threading.Timer(wait, subscription.cancel)
                    stop_timer.daemon = True
                    stop_timer.start()
                client.ack(unacked)
                unacked.clear()
            client.ack(unacked)
        finally:
            if stop_timer is not None:
                stop_timer.cancel()
            subscription.cancel()


def _list(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    for username in client.list_accounts(args.pattern):
        print(escape_field(username))


def _history(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    """Printed as the pages come (a long history starts at once and never sits in memory)."""
    with _logged_in(client, args.user, password):
        if args.last is not None:
            newest = client.history(
                args.other_user, page_size=min(args.last, MAX_PAGE_SIZE), newest_first=True
            )
            for message in reversed(list(itertools.islice(newest, args.last))):
                print(history_line(message))
            return
        for message in client.history(args.other_user, newest_first=args.newest_first):
            print(history_line(message))


def _delete_account(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    with _logged_in(client, args.user, password) as secret:
        client.delete_account(secret)
    if not args.quiet:
        print(f"deleted account {args.user.strip().lower()}")


def _status(client: ChatClient, args: argparse.Namespace, password: PasswordSource) -> None:
    print(status_table(client.cluster_status()))


_COMMANDS: dict[str, Callable[[ChatClient, argparse.Namespace, PasswordSource], None]] = {
    "register": _register,
    "send": _send,
    "read": _read,
    "list": _list,
    "history": _history,
    "delete-account": _delete_account,
    "status": _status,
}


def _member_list(admin: AdminClient, args: argparse.Namespace) -> None:
    print(members_table(admin.list_members()))


def _member_add(admin: AdminClient, args: argparse.Namespace) -> None:
    change = admin.add_member(args.index, args.address, args.peer_address)
    if not args.quiet:
        promote = f"{_prog()} admin member promote {args.index}"
        print(member_added_line(change, args.index, args.address, promote))


def _member_promote(admin: AdminClient, args: argparse.Namespace) -> None:
    change = admin.promote_member(args.index)
    if not args.quiet:
        print(member_promoted_line(change, args.index))


def _member_remove(admin: AdminClient, args: argparse.Namespace) -> None:
    change = admin.remove_member(args.index)
    if not args.quiet:
        print(member_removed_line(change, args.index))


_MEMBER_COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace], None]] = {
    "list": _member_list,
    "add": _member_add,
    "promote": _member_promote,
    "remove": _member_remove,
}


@contextmanager
def _logged_in(client: ChatClient, username: str, password: PasswordSource) -> Iterator[str]:
    """Logs in for the duration of one command; yields the password."""
    secret = password(f"Password for {username}: ")
    client.login(username, secret)
    try:
        yield secret
    finally:
        if client.session is not None:
            try:
                client.logout()
            except ChatError as error:
                logger.warning("could not log out: %s", error)


def _password(prompt: str, environ: Mapping[str, str]) -> str:
    if PASSWORD_ENV in environ:
        return environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise CliError(f"no password: set {PASSWORD_ENV} or run on a terminal")
    return line.rstrip("\r\n")


def _fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _positive_seconds(text: str) -> float:
    seconds = _seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _member_index(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a replica index (0, 1, 2, ...)")
    return int(text)


def _address(text: str) -> str:
    if not _is_host_port(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return text


def _non_negative_seconds(text: str) -> float:
    seconds = _seconds(text)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is a negative number of seconds")
    return seconds


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    return seconds
