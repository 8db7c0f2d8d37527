import os
import sys

# gRPC's C core logs failed TLS handshakes on stderr before the CLI can print its own one-line
# error; it reads this only when grpc is first imported. GRPC_VERBOSITY=INFO shows them again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from client.cli import main

sys.exit(main())
