"""Which proxy a request goes through, decided as curl decides it.

The proxy comes from, highest first: ``--proxy``, ``[fetch] proxy``, then the
environment: ``http_proxy`` for http URLs and ``https_proxy`` for https URLs, else
``all_proxy``; each name is read in lower case, then in upper case (``HTTP_PROXY`` is
skipped when ``REQUEST_METHOD`` is set: in a CGI script a client's ``Proxy:`` header
sets it, "httpoxy"). An empty value is unset; ``--proxy ''`` means no proxy at all, as
curl's ``-x ''``. A proxy without a scheme is ``http://``, without a port port 1080 (as
with curl). Only http proxies are supported: an https URL goes through one with CONNECT.

``--noproxy`` (else ``no_proxy`` / ``NO_PROXY``) lists the hosts reached directly,
whichever proxy is set, separated by commas or spaces: ``*`` is every host; a name
matches itself and its subdomains (``example.com`` and ``.example.com`` both match
``www.example.com``, not ``notexample.com``; ``bücher.de`` matches ``xn--bcher-kva.de``,
as ``fetcher.hosts`` writes both); an IP address or a CIDR range
(``10.0.0.0/8``, ``::1``) matches IP-address hosts in it.

Credentials in a proxy URL (``http://user:pass@proxy:3128``) are secrets: they become
the ``Proxy-Authorization`` header of requests to that proxy, and nothing else;
``safe_proxy`` is the URL as it may be shown.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from fetcher.hosts import host_name, origin
from fetcher.models import redact_userinfo

__all__ = ["Proxy", "ProxyRoutes", "safe_proxy"]

DEFAULT_PORT = 1080  # curl's, for a proxy URL without one
_SEPARATORS = re.compile(r"[,\s]+")


def safe_proxy(text: str) -> str:
    """``text`` with any credentials in it, user name and password, replaced by
    ``<redacted>`` (``models.redact_userinfo`` for a proxy URL)."""
    return redact_userinfo(text, whole=True)


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy: its URL without credentials, and the ``Proxy-Authorization`` they make."""

    url: URL
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> Proxy:
        """Parse ``[http://][user:password@]host[:port]``; raise ``ValueError``."""
        shown = safe_proxy(text)
        try:
            url = URL(text if "://" in text else f"http://{text}")
            port = url.explicit_port
        except ValueError:
            raise ValueError(f"{shown}: not a proxy URL") from None
        if url.scheme != "http":
            raise ValueError(f"{shown}: only http:// proxies are supported")
        if not url.raw_host:
            raise ValueError(f"{shown}: a proxy URL needs a host")
        authorization = None
        if url.raw_user is not None or url.raw_password is not None:
            pair = f"{url.user or ''}:{url.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(url.origin().with_port(port or DEFAULT_PORT), authorization)


@dataclass(frozen=True, slots=True)
class ProxyRoutes:
    """The run's proxies: one for http URLs, one for https URLs, and the hosts that
    bypass both."""

    http: Proxy | None = None
    https: Proxy | None = None
    bypass: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls, proxy: str | None, noproxy: str | None, environ: Mapping[str, str]
    ) -> ProxyRoutes:
        """Routes from ``proxy`` (None: from ``environ``; ``""``: none) and ``noproxy``
        (None: ``NO_PROXY`` from ``environ``). Raise ``ValueError`` naming a proxy that
        cannot be used."""
        if noproxy is None:
            _, noproxy = _variable(environ, "no_proxy")
        bypass = tuple(_pattern(text) for text in _SEPARATORS.split(noproxy) if text)
        if proxy is not None:
            one = Proxy.parse(proxy) if proxy else None
            return cls(one, one, bypass)
        return cls(_from_environ(environ, "http"), _from_environ(environ, "https"), bypass)

    def __bool__(self) -> bool:
        return self.http is not None or self.https is not None

    def for_url(self, url: URL) -> Proxy | None:
        """The proxy for ``url``, or None to go direct."""
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None or not self.bypass:
            return proxy
        found = origin(url)
        return None if bypasses(found.host if found else "", self.bypass) else proxy


def _pattern(text: str) -> str:
    """A ``NO_PROXY`` pattern as ``bypasses`` compares it: a name as ``hosts.host_name``
    writes it (``.BÜCHER.de`` -> ``.xn--bcher-kva.de``), its leading dot kept."""
    dot = "." if text.startswith(".") else ""
    return dot + host_name(text.lstrip("."))


def bypasses(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` matches one of the ``NO_PROXY`` patterns (as ``ProxyRoutes``
    keeps them)."""
    host = host_name(host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for pattern in patterns:
        if pattern == "*":
            return True
        if address is None:
            name = pattern.strip(".")
            if name and (host == name or host.endswith(f".{name}")):
                return True
        elif _in_network(address, pattern):
            return True
    return False


def _in_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, pattern: str) -> bool:
    try:
        return address in ipaddress.ip_network(pattern.strip("[]"), strict=False)
    except ValueError:  # a name, or not an address: it matches no IP-address host
        return False


def _from_environ(environ: Mapping[str, str], scheme: str) -> Proxy | None:
    for name in (f"{scheme}_proxy", "all_proxy"):
        found, value = _variable(environ, name)
        if value:
            try:
                return Proxy.parse(value)
            except ValueError as exc:
                raise ValueError(f"{found}: {exc}") from None
    return None


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """The name found and the value of ``name`` in the environment, in lower case, else
    in upper case; an empty value is unset."""
    for found in (name, name.upper()):
        if found == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue
        value = environ.get(found, "").strip()
        if value:
            return found, value
    return name, ""
