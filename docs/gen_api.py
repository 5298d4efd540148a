"""Generate docs/api.md from the docstrings of afmi's public names.

Run ``python docs/gen_api.py`` after changing the public API; the test suite
fails while docs/api.md is out of date.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import afmi  # noqa: E402


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def _sig(obj: object) -> str:
    try:
        return str(inspect.signature(obj)).replace("'", "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "Everything listed here is exported by `import afmi` (`afmi.__all__`).",
        "",
    ]
    for name in sorted(afmi.__all__, key=lambda n: (not inspect.isclass(getattr(afmi, n)), n)):
        obj = getattr(afmi, name)
        if name.startswith("__"):
            continue
        if inspect.isclass(obj):
            out += [
                f"## class `afmi.{name}{_sig(obj) if not issubclass(obj, BaseException) else ''}`",
                "",
            ]
            out += [_doc(obj), ""]
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, (property, classmethod))
                ):
                    continue
                fn = member.__func__ if isinstance(member, classmethod) else member
                if isinstance(member, property):
                    summary = _doc(member).splitlines()[0] if member.__doc__ else ""
                    out += [f"- **`{attr}`** (property): {summary}"]
                    continue
                prefix = "async " if inspect.iscoroutinefunction(fn) else ""
                first = _doc(fn).split("\n\n")[0].replace("\n", " ")
                out += [f"- **`{prefix}{attr}{_sig(fn)}`** — {first}"]
            out.append("")
        elif callable(obj) and not isinstance(obj, afmi.Op):
            prefix = "async " if inspect.iscoroutinefunction(obj) else ""
            out += [f"## `{prefix}afmi.{name}{_sig(obj)}`", "", _doc(obj), ""]
        else:
            out += [f"## `afmi.{name}`", "", f"`{obj!r}`", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "api.md").write_text(render())
    print("wrote docs/api.md")
