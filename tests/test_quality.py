"""Lint, format and type checks run as part of the test suite (ruff and mypy --strict)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["afmi", "tests", "examples", "docs", "noxfile.py"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def tool(name: str) -> list[str]:
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        pytest.skip(f"{name} is not installed (it is part of the [test] extra)")
    return [sys.executable, "-m", name]


def test_ruff_lint():
    proc = run(*tool("ruff"), "check", *TARGETS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = run(*tool("ruff"), "format", "--check", *TARGETS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict():
    proc = run(*tool("mypy"), "afmi")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_names_have_docstrings():
    import afmi

    missing = [
        name
        for name in afmi.__all__
        if not name.isupper() and not name.startswith("__") and not getattr(afmi, name).__doc__
    ]
    assert not missing, f"public names without a docstring: {missing}"
