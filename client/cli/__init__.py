"""The command line (`python -m client`): one-shot commands (commands.py) and the interactive
client (interactive.py), printing through output.py. Built on the library's public names only
(what `client` exports; tests/test_layout.py checks it), as any other program would be."""

from client.cli.commands import main

__all__ = ["main"]
