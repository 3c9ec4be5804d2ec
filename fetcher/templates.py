"""The safe template renderer: ``{column}``, ``{env.NAME}``, ``{{`` and ``}}``.

A template is parsed once into literal text and names. Rendering only looks names up:
nothing is evaluated, so ``{a.b}``, ``{a[0]}`` or ``{a:>10}`` are names that do not exist,
never attribute access, indexing or format specs. Values rendered from ``{env.*}`` are
reported back as secrets so every stored or printed copy can be redacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from fetcher.errors import TemplateError

__all__ = ["Rendered", "Template", "compile_template"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered template and the secret values it took from the environment."""

    text: str
    secrets: frozenset[str]


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal strings and ``(scope, name)`` lookups, in order."""

    source: str
    parts: tuple[str | tuple[str, str], ...]

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

    def render(self, row: Mapping[str, str], env: Mapping[str, str]) -> Rendered:
        """Fill the template; raise ``TemplateError`` for a name with no value."""
        pieces: list[str] = []
        secrets: set[str] = set()
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            scope, name = part
            if scope == "env":
                value = env.get(name)
                if value is None:
                    raise TemplateError(f"environment variable {name} is not set")
                if value:
                    secrets.add(value)
            else:
                value = row.get(name)
                if value is None:
                    raise TemplateError(f"unknown placeholder {{{name}}}")
            pieces.append(value)
        return Rendered("".join(pieces), frozenset(secrets))


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
    return Template(source, tuple(parts))


@lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    """Parse ``source`` once; raise ``TemplateError`` when it is malformed."""
    return _parse(source)
