"""The test suite's own SeaweedFS (s3deploy.devtools.seaweed) under parallel test workers."""

from __future__ import annotations

import socket
from pathlib import Path

from s3deploy.devtools.seaweed import SeaweedServer
from tests.s3server import sync_client


class FirstPortTaken(SeaweedServer):
    """A server whose first start finds its volume port taken, as when another worker's server (or any
    process) binds it between free_port() and weed's own bind."""

    def __init__(self, workdir: Path, taken: int) -> None:
        super().__init__(workdir)
        self.taken = taken
        self.commands: list[list[str]] = []

    def command(self) -> list[str]:
        cmd = super().command()
        if not self.commands:
            cmd = [f"-volume.port={self.taken}" if arg.startswith("-volume.port=") else arg for arg in cmd]
        self.commands.append(cmd)
        return cmd


def test_a_port_taken_before_weed_binds_it_is_replaced_and_the_server_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        server = FirstPortTaken(tmp_path, holder.getsockname()[1])
        with server:
            assert len(server.commands) == 2  # weed exited on the taken port; started again on new ones
            client = sync_client(server.endpoint_url)
            client.create_bucket(Bucket="started")
            assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["started"]
