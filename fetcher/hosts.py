"""Which host a URL names: the one parser of hosts, for every place that asks.

``origin(url)`` splits a URL into its ``Origin``: scheme, host and port. yarl splits it,
as it does for aiohttp, which connects to what it finds: the host is what follows the
last ``@`` of the authority (a user name or password may hold ``@`` and ``:``), and the
authority ends at the first ``/``, ``?`` or ``#``. The parts are then made canonical,
here and nowhere else:

- the scheme and the host in lower case (``HTTP://Example.COM`` -> ``http``,
  ``example.com``);
- no trailing dot: ``example.com.`` is the absolute spelling of ``example.com``, one
  host to DNS (and to the server, which sees ``Host: example.com``);
- an internationalised name in its ASCII form, as it is sent (``bücher.de`` and
  ``xn--bcher-kva.de`` -> ``xn--bcher-kva.de``: yarl's IDNA 2008 with UTS 46 mapping);
- an IPv6 address without its brackets, compressed (``[0:0::1]`` -> ``::1``);
- the port as given, else the scheme's default (80 for http, 443 for https): a port
  written ``:80`` on an http URL is no other origin than none.

A URL without a host (``http:///x``, ``http://./``, a relative URL) has no origin, and
one with a port that is no number up to 65535 or a name IDNA refuses is malformed
(``parse_origin`` raises ``ValueError``, ``origin`` answers None).

Every place derives its own form of the host from the ``Origin``: the per-host limits
key on ``Origin.key`` (``limits.host_key``), the output layout names a folder after the
host and a port that is not the default (``paths``), the index's ``host`` column (what
``fetch stats`` counts) is ``Origin.netloc``, a crawl's scope compares ``Origin.host``
(or its registrable domain), ``models.same_origin`` compares whole origins, and
``NO_PROXY`` matches ``Origin.host`` against patterns made canonical by ``host_name``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from yarl import URL

__all__ = ["DEFAULT_PORTS", "Origin", "authority_origin", "host_name", "origin", "parse_origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """A URL's scheme, host and port, canonical (see the module docstring): two URLs
    name one host when their ``host`` is equal, one origin when their ``Origin`` is."""

    scheme: str
    host: str
    port: int | None  # None: no port given, and the scheme has no default

    @property
    def default_port(self) -> bool:
        """True when the port is the scheme's default (or there is none)."""
        return self.port is None or self.port == DEFAULT_PORTS.get(self.scheme)

    @property
    def bracketed(self) -> str:
        """The host as a URL writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def netloc(self) -> str:
        """``host[:port]``, the port only when it is not the scheme's default."""
        return self.bracketed if self.default_port else f"{self.bracketed}:{self.port}"

    @property
    def url(self) -> str:
        """``scheme://host[:port]``: where robots.txt and sitemap.xml are asked for."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def key(self) -> str:
        """``host:port``, the port always: the key of the host in ``limits.Limits``."""
        return f"{self.bracketed}:{self.port}"


def parse_origin(url: str | URL) -> Origin | None:
    """The origin of ``url``; None when it names no host. Raise ``ValueError`` for a
    malformed one (a port that is no number up to 65535, a name IDNA refuses)."""
    parsed = url if isinstance(url, URL) else URL(url)
    return _canonical(parsed.scheme, parsed.raw_host, parsed.explicit_port)


# Memoizes a pure function of its arguments: a job's URLs share a few hosts, and each
# request asks for its host's limits key.
@functools.lru_cache(maxsize=1024)
def _canonical(scheme: str, raw_host: str | None, port: int | None) -> Origin | None:
    """The origin of yarl's parts of a URL (lower case and IDNA already, unless the URL
    was built ``encoded=True``)."""
    host = host_name(raw_host or "")
    if not host:
        return None
    scheme = scheme.lower()
    return Origin(scheme, host, DEFAULT_PORTS.get(scheme) if port is None else port)


def origin(url: str | URL) -> Origin | None:
    """The origin of ``url``; None when it names no host or is malformed."""
    try:
        return parse_origin(url)
    except (ValueError, TypeError):  # yarl's words for a malformed URL
        return None


def authority_origin(scheme: str, authority: str) -> Origin | None:
    """``origin`` of ``scheme://authority``: for a URL already split at its authority."""
    return origin(f"{scheme}://{authority}")


def host_name(text: str) -> str:
    """A host name or address as ``Origin.host`` writes it (``[::1]`` -> ``::1``,
    ``BÜCHER.de.`` -> ``xn--bcher-kva.de``); a text that is no host (a pattern with
    ``*`` or ``/``, say) in lower case, without brackets and trailing dots."""
    text = text.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if text.isascii() and ":" not in text:
        return text
    try:
        return URL.build(scheme="http", host=text).raw_host or text
    except (ValueError, TypeError):
        return text
