"""Run a whole cluster on this machine: one `python -m replica --index N` process per replica
in the config, their output interleaved with an index prefix; Ctrl-C (or SIGTERM) stops all.

    python -m replica.launcher [--config cluster.toml] [--data-dir DIR] [extra replica flags]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import IO

from replica.config import ConfigError, load_cluster_config

COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m")
RESET = "\033[0m"


def _pump(index: int, stream: IO[bytes], out: IO[str], lock: threading.Lock, colour: bool) -> None:
    prefix = f"replica {index} | "
    if colour:
        prefix = f"{COLOURS[index % len(COLOURS)]}{prefix}{RESET}"
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            out.write(prefix + line + "\n")
            out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replica.launcher", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("CHAT_CONFIG"))
    args, extra = parser.parse_known_args(argv)
    try:
        cluster = load_cluster_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lock = threading.Lock()
    colour = sys.stdout.isatty()
    processes: list[subprocess.Popen[bytes]] = []
    pumps = []
    for replica in cluster.replicas:
        cmd = [sys.executable, "-m", "replica", "--index", str(replica.index), *extra]
        if args.config:
            cmd += ["--config", args.config]
        process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops each one
        )
        processes.append(process)
        assert process.stdout is not None
        pump = threading.Thread(
            target=_pump, args=(replica.index, process.stdout, sys.stdout, lock, colour)
        )
        pump.start()
        pumps.append(pump)
    addresses = ", ".join(r.address for r in cluster.replicas)
    print(f"started {len(processes)} replicas ({addresses}); Ctrl-C stops them all", flush=True)

    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping.is_set():
        # A replica killed by hand (kill -9) is left dead: the others carry on, as in production.
        if all(p.poll() is not None for p in processes):
            break
        stopping.wait(0.5)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    for pump in pumps:
        pump.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
