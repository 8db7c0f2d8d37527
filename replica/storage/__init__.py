"""The replica's database and what lives beside it: the engine and its error classes
(database.py), the log writer that validates, appends and applies a batch of commands in one
transaction (writer.py), the commit tracker whose waiters learn their events committed
(commit.py), the accounts directory and the live-message notifier (directory.py,
notifier.py), the role the writer fences its writes on (role.py), event <-> proto conversion
(wire.py) and a write's traced spans (spans.py). May import `protocol/` and the root's leaves
(`config`, `errors`); nothing of `replication/`, `chat/` or `server/`."""
