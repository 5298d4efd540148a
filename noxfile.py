"""Developer sessions: ``nox -s tests lint typecheck docs examples``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (starts its own Redis and S3 servers when none is reachable)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "afmi", "tests", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "afmi", "tests", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]")
    session.run("mypy", "afmi")


@nox.session
def examples(session: nox.Session) -> None:
    """Run every example."""
    session.install("-e", ".[all]")
    session.run("pytest", "tests/test_examples.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate docs/api.md from the docstrings."""
    session.install("-e", ".[all]")
    session.run("python", "docs/gen_api.py")
