"""The safe template renderer: ``{column}``, ``{env.NAME}``, ``{{`` and ``}}``.

A template is parsed once into literal text and names. Rendering only looks names up:
nothing is evaluated, so ``{a.b}``, ``{a[0]}`` or ``{a:>10}`` are names that do not exist,
never attribute access, indexing or format specs. A render gives two texts: the one to
send, and the one to show, in which each value taken from ``{env.*}`` reads
``<redacted>``. A stored or printed copy is the shown text, so a secret is redacted where a
template put it, and no other text is ever searched for its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote

from fetcher.errors import TemplateError
from fetcher.models import REDACTED

__all__ = ["Rendered", "Template", "compile_template"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AUTHORITY_END = re.compile(r"[/?#]")
# What a value in the userinfo keeps as it is: the unreserved characters (kept by quote),
# the sub-delimiters, and ":" (between user and password; a user name cannot hold one).
_USERINFO_SAFE = "!$&'()*+,;=:"


class Rendered(NamedTuple):  # made per row: 0.38 us, a frozen dataclass 0.54 us
    """A rendered template: ``text`` to send, ``safe`` to print and store (each value taken
    from the environment reads ``<redacted>``; the same string when there is none)."""

    text: str
    safe: str

    @property
    def secret(self) -> bool:
        """True when the shown text hides something of the sent one."""
        return self.safe != self.text


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal strings and ``(scope, name)`` lookups, in order."""

    source: str
    parts: tuple[str | tuple[str, str], ...]
    reads_env: bool = False  # some part is an {env.*}

    @property
    def columns(self) -> frozenset[str]:
        """The row columns this template reads."""
        return frozenset(p[1] for p in self.parts if isinstance(p, tuple) and p[0] == "col")

    @property
    def env_names(self) -> frozenset[str]:
        """The environment variables this template reads."""
        return frozenset(p[1] for p in self.parts if isinstance(p, tuple) and p[0] == "env")

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(
        self,
        row: Mapping[str, str],
        env: Mapping[str, str],
        *,
        quoted: frozenset[int] = frozenset(),
    ) -> Rendered:
        """Fill the template; raise ``TemplateError`` for a name with no value.

        The values of the placeholders at the indexes in ``quoted`` (see ``userinfo``)
        are percent-encoded.
        """
        pieces: list[str] = []
        for index, part in enumerate(self.parts):
            if isinstance(part, str):
                pieces.append(part)
                continue
            scope, name = part
            value = (env if scope == "env" else row).get(name)
            if value is None:
                if scope == "env":
                    raise TemplateError(f"environment variable {name} is not set")
                raise TemplateError(f"unknown placeholder {{{name}}}")
            pieces.append(quote(value, safe=_USERINFO_SAFE) if index in quoted else value)
        text = "".join(pieces)
        if not self.reads_env:
            return Rendered(text, text)
        for index, part in enumerate(self.parts):
            if isinstance(part, tuple) and part[0] == "env":
                pieces[index] = REDACTED
        return Rendered(text, "".join(pieces))

    def userinfo(self) -> frozenset[int]:
        """The indexes of the placeholders that land in the userinfo
        (``user:password@``) when this template is a URL.

        Where the userinfo ends is read from the template's literal text only, so a value
        holding ``@``, ``/`` or ``:`` cannot move it: pass the result to ``render`` as
        ``quoted``. A placeholder that holds the scheme or the host is not in it.
        """
        skeleton = "".join(p if isinstance(p, str) else "\0" for p in self.parts)
        scheme_end = skeleton.find("://")
        if scheme_end < 0 or "\0" in skeleton[:scheme_end]:
            return frozenset()
        start = scheme_end + 3
        authority = _AUTHORITY_END.split(skeleton[start:], 1)[0]
        end = start + authority.rfind("@")
        if end < start:
            return frozenset()
        indexes, at = set(), 0
        for index, part in enumerate(self.parts):
            if not isinstance(part, str) and start <= at < end:
                indexes.add(index)
            at += len(part) if isinstance(part, str) else 1
        return frozenset(indexes)


def _parse(source: str) -> Template:
    parts: list[str | tuple[str, str]] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(source):
        literal.append(source[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif match.group(1) is None:  # a lone brace
            raise TemplateError(
                f"unmatched {token!r} in template {source!r} (write {token * 2} for a literal)"
            )
        else:
            name = match.group(1)
            if not name.strip():
                raise TemplateError(f"empty placeholder {{}} in template {source!r}")
            if literal:
                parts.append("".join(literal))
                literal = []
            if name.startswith("env."):
                env_name = name[4:]
                if not _ENV_NAME.fullmatch(env_name):
                    raise TemplateError(f"bad environment variable name in {{{name}}}")
                parts.append(("env", env_name))
            else:
                parts.append(("col", name))
    literal.append(source[position:])
    text = "".join(literal)
    if text:
        parts.append(text)
    reads_env = any(isinstance(p, tuple) and p[0] == "env" for p in parts)
    return Template(source, tuple(parts), reads_env)


@lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    """Parse ``source`` once; raise ``TemplateError`` when it is malformed."""
    return _parse(source)
