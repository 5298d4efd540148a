"""Shared fixtures: real Redis and S3-compatible servers, started when none is reachable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from afmi.testing.servers import S3Server, redis_server, s3_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server (the local one, or a private one started for the session)."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible HTTP server (moto) with a fresh bucket, and its credentials set."""
    with s3_server() as server:
        old = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes that must import this checkout's afmi."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    """The interpreter running the tests."""
    return sys.executable


#: What the ``afmi_cli`` fixture gives: ``run(*args, env=None, cwd=None, timeout=60)``.
AfmiCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def afmi_cli(subprocess_env: dict[str, str]) -> AfmiCli:
    """Run ``python -m afmi ARGS`` as a user would, in a child process; returns the
    completed process (text output captured, exit code not checked). ``env``
    replaces the child environment (default: ``subprocess_env``)."""

    def run(
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "afmi", *args],
            env=dict(subprocess_env if env is None else env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
