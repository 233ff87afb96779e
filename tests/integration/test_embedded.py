from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from mesh._broker.embedded import EmbeddedNats
from mesh.errors import EmbeddedServerError


def test_the_embedded_server_fsyncs_every_write_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    with server:
        varz_url = f"http://127.0.0.1:{server.monitor_port}/varz"
        with urllib.request.urlopen(varz_url) as response:
            varz = json.load(response)
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert varz["jetstream"]["config"]["store_dir"].startswith(str(tmp_path))
        assert server.url.startswith("nats://127.0.0.1:")
        process_pid = server.pid
    assert process_pid is not None
    assert server.pid is None
    assert "Server Exiting" in server.log_path.read_text() or "Shutdown" in (
        server.log_path.read_text()
    )


def test_a_port_in_use_is_reported_with_the_server_log(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "a") as first:
        second = EmbeddedNats(tmp_path / "b", port=first.port, ready_timeout=5)
        with pytest.raises(EmbeddedServerError, match=r"exited|not ready") as caught:
            second.start()
        assert "address already in use" in caught.value.log_tail.lower()
