"""The loopback server of the demo and tests."""

from __future__ import annotations

import time
import urllib.request

from inf590k.dataset.serve import serve_folder


def test_a_client_that_stops_reading_early_leaves_no_traceback(tmp_path, capsys):
    # pretraining's held-out sample reads the first images of a shard and closes it
    (tmp_path / "big.tar").write_bytes(b"\0" * (32 << 20))  # more than the socket buffers
    with serve_folder(tmp_path) as base_url:
        with urllib.request.urlopen(f"{base_url}/big.tar") as response:
            assert response.read(1024) == b"\0" * 1024
        time.sleep(0.5)  # the server thread meets the closed connection
        with urllib.request.urlopen(f"{base_url}/big.tar") as response:  # still serving
            assert len(response.read()) == 32 << 20
    assert "Traceback" not in capsys.readouterr().err
