"""Fault injection at scale: `make chaos` (100 rounds) and a short run in `make test`."""
