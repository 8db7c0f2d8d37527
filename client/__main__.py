"""`python -m client` and the `chat` command (a console script)."""

import os
import sys


def run() -> int:
    # gRPC's C core logs each failed TLS handshake on stderr at INFO, around the CLI's own
    # one-line error; it reads this once, when grpc is first imported, so it is set before
    # that. An explicit GRPC_VERBOSITY (e.g. INFO, to see them) wins. (The library leaves the
    # process's environment alone: this is the CLI's choice.)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from client.cli import main  # (after the variable above)

    return main()


if __name__ == "__main__":
    sys.exit(run())
