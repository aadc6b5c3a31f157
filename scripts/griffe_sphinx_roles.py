"""Griffe extension for the API reference: read the package's reST-isms as Markdown.

The docstrings of ``mlhelpers`` are Google style with a few Sphinx habits. mkdocstrings renders
Markdown, so before rendering (the source files are untouched) this extension rewrites, in every
docstring of the package:

- ``:func:`name```, ``:class:`~pkg.mod.Name``` and the other Sphinx roles into a code span that
  links to the object's entry when the API reference documents it (an *optional* autoref: no
  warning when it does not, e.g. for a private helper or another library's class);
- a reST literal block marker ``text::`` into ``text:`` (the indented block that follows is
  already a Markdown code block) and a lone ``::`` line into nothing;
- ``Example:`` followed by ``>>>`` lines into ``Examples:``, the Google section whose doctest
  lines render as code.

mkdocs.yml loads it with ``extensions: [scripts/griffe_sphinx_roles.py]``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|data|attr|exc|obj|const|type):`([^`]+)`")
LITERAL_MARK = re.compile(r"(?m)^(?P<text>.*\S)::[ \t]*$")
LONE_MARK = re.compile(r"(?m)^[ \t]*::[ \t]*$")
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"(?m)^(?P<indent>[ \t]*)Example:[ \t]*\n(?=(?:[ \t]*\n)*[ \t]*>>>)")


def _resolve(obj: griffe.Object, target: str, root: str) -> str | None:
    """The full path of ``target`` as written in ``obj``'s docstring, or None."""
    if target.startswith("."):
        module = obj if obj.is_module else obj.module
        package = module.path if module.is_init_module else module.parent.path  # type: ignore[union-attr]
        return package + target
    if target == root or target.startswith(root + "."):
        return target
    first, _, rest = target.partition(".")
    try:
        full = obj.resolve(first)
    except Exception:  # griffe.NameResolutionError and friends: not ours to link
        return None
    if not (full == root or full.startswith(root + ".")):
        return None
    return f"{full}.{rest}" if rest else full


def rewrite(text: str, obj: griffe.Object, root: str) -> str:
    def role(match: re.Match[str]) -> str:
        content = match.group(2).strip()
        titled = re.fullmatch(r"(?s)(.*?)\s*<([^<>]+)>", content)
        title, target = (titled.group(1), titled.group(2)) if titled else (None, content)
        short = target.startswith("~")
        target = target.lstrip("~")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        full = _resolve(obj, target, root)
        code = f"<code>{html.escape(title)}</code>"
        if full is None:
            return code
        return f'<autoref identifier="{html.escape(full)}" optional>{code}</autoref>'

    text = ROLE.sub(role, text)
    text = EXAMPLE.sub(lambda m: f"{m.group('indent')}Examples:\n", text)
    text = LONE_MARK.sub("", text)
    text = LITERAL_MARK.sub(lambda m: m.group("text") + ":", text)
    return text


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        filepath = pkg.filepath if not isinstance(pkg.filepath, list) else pkg.filepath[0]
        if REPO not in Path(filepath).resolve().parents:
            return  # only this repository's package, not torch & co.
        seen: set[str] = set()

        def walk(obj: griffe.Object) -> None:
            if obj.path in seen:
                return
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj, pkg.path)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)
