"""`tessera hub` says where it serves, and a port it cannot take is told at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tessera.testing.cluster import free_port, start_hub, stop, tessera_command

pytestmark = pytest.mark.timeout(120)


def test_the_hub_prints_its_url_and_refuses_a_taken_port(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "hub.log"
    hub = start_hub(tmp_path / "a", port, log=log)
    try:
        assert f"hub serving at http://127.0.0.1:{port} (Ctrl-C stops it)" in log.read_text()
        assert f"admin token in {tmp_path / 'a' / 'admin.token'}" in log.read_text()
        second = subprocess.run(
            tessera_command("hub", "--home", str(tmp_path / "b"), "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop([hub])
    said = " ".join((second.stdout + second.stderr).split())  # the console may wrap it
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" in said
