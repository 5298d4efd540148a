"""The docs stay true: the API reference matches the code, and local links resolve."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_is_up_to_date():
    render = runpy.run_path(str(ROOT / "docs" / "gen_api.py"))["render"]
    current = (ROOT / "docs" / "api.md").read_text()
    assert current == render(), "docs/api.md is stale: run `python docs/gen_api.py`"


def test_markdown_links_resolve():
    broken = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", md.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken
