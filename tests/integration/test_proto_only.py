"""A client built from protos/chat.proto alone -- stubs generated afresh into an empty
directory, in a process that imports nothing of this repository -- registers, logs in, sends,
reads its inbox and its history against a real replica. What the wire carries is the
.proto's, whatever the repository's own client library does on top of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster_checks import wait_for_primary
from testsupport.harness import ClusterProcesses

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent(
    """
    import sys, uuid
    import grpc
    import chat_pb2 as pb, chat_pb2_grpc as rpc

    assert "protos" not in sys.modules and "client" not in sys.modules
    stub = rpc.ChatStub(grpc.insecure_channel(sys.argv[1]))
    rid = lambda: uuid.uuid4().hex
    for name in ("ann", "ben"):
        stub.Register(pb.RegisterRequest(request_id=rid(), username=name, password="pw-12345678"))
    ann = stub.Login(pb.LoginRequest(request_id=rid(), username="ann", password="pw-12345678"))
    ben = stub.Login(pb.LoginRequest(request_id=rid(), username="BEN", password="pw-12345678"))
    sent = stub.Send(pb.SendRequest(
        request_id=rid(), session_token=ann.session_token, recipient="ben", body="from the proto"))
    for reply in stub.Subscribe(pb.SubscribeRequest(session_token=ben.session_token)):
        if reply.WhichOneof("item") == "message":
            assert (reply.message.message_id, reply.message.sender) == (sent.message_id, "ann")
            break
    page = stub.History(pb.HistoryRequest(session_token=ann.session_token, other_user="ben"))
    assert [m.body for m in page.messages] == ["from the proto"]
    try:
        stub.Send(pb.SendRequest(
            request_id=rid(), session_token=ann.session_token, recipient="nobody", body="x"))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
    print("ok", sent.message_id)
    """
)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[str]:
    with ClusterProcesses(tmp_path / "cluster", 1) as cluster:
        cluster.start(0)
        wait_for_primary(cluster)
        yield cluster.address(0)


def test_a_client_generated_from_the_proto_alone_talks_to_a_replica(
    replica: str, tmp_path: Path
) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(REPO / "protos" / "chat.proto", alone / "chat.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
         "--grpc_python_out=.", "chat.proto"],
        cwd=alone,
        check=True,
    )  # fmt: skip
    (alone / "client.py").write_text(CLIENT)
    done = subprocess.run(
        # -E -s: no PYTHONPATH, no user site: the script's directory and the libraries only
        [sys.executable, "-E", "-s", str(alone / "client.py"), replica],
        cwd=alone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
