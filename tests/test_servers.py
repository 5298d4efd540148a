"""The private servers the tests start (afmi.testing.servers): a port taken between
choosing it and binding it is retried, and a server that cannot start says why."""

from __future__ import annotations

import shutil
import socket
import sys

import pytest

from afmi.testing import servers


def test_a_port_taken_before_the_server_binds_it_is_retried_on_another(monkeypatch):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: the server's bind fails
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real_free_port = servers.free_port
        # the first "free" port is taken by the time the server binds it
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        tried: list[int] = []

        def argv(port: int) -> list[str]:
            tried.append(port)
            return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]

        with servers._started(argv, 20) as (port, proc):
            assert servers.port_open("127.0.0.1", port)
            assert proc.poll() is None
        assert tried[0] == busy and port != busy and len(tried) == 2
        assert proc.poll() is not None  # stopped on exit


def test_a_server_that_cannot_start_is_an_error_quoting_its_output(tmp_path):
    attempts = tmp_path / "attempts"

    def argv(port: int) -> list[str]:
        code = (
            f"open({str(attempts)!r}, 'a').write('x'); import sys; "
            f"print('cannot bind port {port}: no such luck', file=sys.stderr); sys.exit(1)"
        )
        return [sys.executable, "-c", code]

    with pytest.raises(servers.ServerExitedError, match="no such luck") as info:
        with servers._started(argv, 20):
            pytest.fail("a server that exits at once was yielded")
    assert "exited with code 1" in str(info.value)
    assert attempts.read_text() == "x" * servers.START_ATTEMPTS
