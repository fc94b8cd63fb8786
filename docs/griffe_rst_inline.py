"""Griffe extension for the docs build: the reST inline markup of pico's docstrings as
Markdown.

pico's docstrings are prose in one style: names in double backticks (which Markdown reads
as code too), Sphinx roles for cross-references (``:class:`Method```,
``:func:`~pico.models.dims.feature_dim```) and ``::`` before an indented example. mkdocs
renders docstrings as Markdown, where a role would show as literal ``:class:`` text. This
extension rewrites each role, once the package is loaded, into a cross-reference to the
object it names, resolved in the docstring's own scope (its module's imports, its class's
members) the way Sphinx resolves it: the link appears when that object is rendered in the
API reference, and plain code otherwise, so an unrendered target is never a build warning.
A paragraph ending in ``::`` ends in ``:``, its indented block is a code block in both
languages. The source docstrings stay as they are.

``mkdocs.yml`` loads it as ``docs/griffe_rst_inline.py:RstInline``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

#: a Sphinx role of the Python domain: ``:class:`target```, ``:func:`~a.b.c```,
#: ``:meth:`title <target>```
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(?P<text>[^`]+)`")
#: the title-and-target form of a role's text
EXPLICIT = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>$")
#: a paragraph ending in reST's literal-block marker: ``Text::`` (one colon stays) or a
#: lone ``::`` line (dropped)
LITERAL_MARKER = re.compile(r"(?m)(?:(?P<after_text>(?<=\S))|^[ \t]*)::[ \t]*$")


def _target(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` stands for in the scope of ``obj``: ``name`` itself when it
    starts with the package's own name (``pico.``), else its first part resolved among
    the members and imports of ``obj`` and its parents (``Method``, ``torch.nn.Module``);
    a dotted name that does not resolve is taken as a full path, a plain one as None."""
    head, _, rest = name.partition(".")
    if rest and head == obj.package.name:
        return name
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, griffe.AliasResolutionError):
        return name if rest else None
    return f"{path}.{rest}" if rest else path


def _role(obj: griffe.Object, match: re.Match[str]) -> str:
    text = match["text"].strip()
    if explicit := EXPLICIT.match(text):
        title, name = explicit["title"], explicit["target"].strip()
    else:
        name = text.removeprefix("~")
        title = name.rsplit(".", 1)[-1] if text.startswith("~") else name
    code = f"<code>{html.escape(title)}</code>"
    target = _target(obj, name.removeprefix("."))
    if target is None:
        return code
    # autorefs links it when the target is rendered somewhere, and leaves the code alone
    # (no warning) when it is not: ``optional``
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def rewrite(obj: griffe.Object, text: str) -> str:
    """``text``, a docstring of ``obj``, with its roles as cross-references and ``::``
    literal-block markers as ``:`` (a lone ``::`` line is dropped)."""
    text = ROLE.sub(lambda match: _role(obj, match), text)
    return LITERAL_MARKER.sub(lambda m: "" if m["after_text"] is None else ":", text)


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined under it (aliases, i.e. imports, left out)."""
    found = [obj]
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            found += _objects(member)
    return found


class RstInline(griffe.Extension):
    """Rewrites the docstrings of a package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value)

    # the same event under its name in griffe 1 (Python 3.10 resolves to it); rewriting
    # twice changes nothing: a rewritten docstring holds no role
    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self.on_package(pkg=pkg, **kwargs)
