"""Content codings: every coding a response lists is undone as its body streams.

aiohttp decodes a body in one coding it knows and passes any other as it came: with
``Content-Encoding: gzip, gzip`` a layer stayed on, a gzip stream cut short under a
matching Content-Length passed as whole, and ``br`` without a Brotli decoder failed at the
headers as an HTTP 400. So the engine takes the body as sent and decodes it here, as curl
does: the codings are undone in reverse order of listing (RFC 9110, 8.4), ``identity``
is nothing to undo, more than five layers are refused (curl's limit), and a stream that
does not end where the body ends is an error, not a shorter body.

``decoder(values)`` reads the Content-Encoding values; ``Decoder.feed`` turns a chunk
into decoded pieces of at most about ``PIECE`` bytes (so ``--max-size`` stops a bomb
between two pieces, never after a big allocation), and ``Decoder.finish`` checks that
every stream ended. A body with no coding gets no decoder and costs nothing more.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from fetcher.errors import DecodeError

__all__ = ["ACCEPT_ENCODING", "MAX_CODINGS", "PIECE", "Decoder", "decoder"]

PIECE = 1 << 18  # decoded bytes made at once, at most (a brotli piece may reach twice that)
MAX_CODINGS = 5

try:  # the Brotli package (the speed and test extras); 1.2 bounds its output
    import brotli

    _brotli: Any = brotli if hasattr(brotli.Decompressor, "can_accept_more_data") else None
except ImportError:
    _brotli = None


class Decoder(Protocol):
    """Undoes one or more codings of one body."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next ``data``; raises ``DecodeError``."""
        ...

    def finish(self) -> None:
        """Raise ``DecodeError`` unless each stream that began has ended."""
        ...


class _Zlib:
    """gzip (of one member or more) or deflate (zlib-wrapped as RFC 9110 says, or raw,
    as some servers send it: the first byte tells, as browsers and curl see it)."""

    __slots__ = ("_name", "_obj")

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj: Any = None  # made at the first byte

    def _begin(self, first: int) -> Any:
        if self._name == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        obj = self._obj = self._obj or self._begin(data[0])
        while True:
            try:
                piece = obj.decompress(data, PIECE)
            except zlib.error as exc:
                raise DecodeError(f"the body is not valid {self._name}: {exc}") from None
            if piece:
                yield piece
            if obj.eof:  # a member ended; gzip may have another after it
                data = obj.unused_data
                if not data:
                    return
                if self._name != "gzip":
                    raise DecodeError(f"data after the end of the {self._name} stream")
                obj = self._obj = self._begin(data[0])
            else:
                data = obj.unconsumed_tail
                if not data and len(piece) < PIECE:  # a full piece may have more behind it
                    return

    def finish(self) -> None:
        if self._obj is not None and not self._obj.eof:
            raise DecodeError(f"the {self._name} stream ends early: the body is cut short")


class _Brotli:
    __slots__ = ("_obj", "_started")

    def __init__(self) -> None:
        self._obj = _brotli.Decompressor()
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._started = self._started or bool(data)
        try:
            piece = self._obj.process(data, output_buffer_limit=PIECE)
            while piece:  # the output was cut at the limit, or the input is done
                yield piece
                piece = self._obj.process(b"", output_buffer_limit=PIECE)
        except _brotli.error as exc:
            raise DecodeError(f"the body is not valid br: {exc}") from None

    def finish(self) -> None:
        if self._started and not self._obj.is_finished():
            raise DecodeError("the br stream ends early: the body is cut short")


class _Layers:
    """Several codings: each layer's pieces go through the layers under it."""

    __slots__ = ("_layers",)

    def __init__(self, layers: list[Decoder]) -> None:
        self._layers = layers

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self._layers):
            yield data
            return
        for piece in self._layers[index].feed(data):
            yield from self._through(index + 1, piece)

    def finish(self) -> None:
        for layer in self._layers:
            layer.finish()


_DECODERS: dict[str, Callable[[], Decoder]] = {
    "gzip": lambda: _Zlib("gzip"),
    "x-gzip": lambda: _Zlib("gzip"),  # RFC 9110, 8.4.1.3: the same as gzip
    "deflate": lambda: _Zlib("deflate"),
}
if _brotli is not None:
    _DECODERS["br"] = _Brotli

# What a request offers (aiohttp's default would offer br whenever a Brotli binding imports).
ACCEPT_ENCODING = ", ".join(name for name in _DECODERS if name != "x-gzip")


def decoder(values: Iterable[str]) -> Decoder | None:
    """A decoder for a body whose Content-Encoding header lines are ``values``; None
    when there is nothing to undo. Raises ``DecodeError`` for a coding fetch cannot
    decode and for more than ``MAX_CODINGS`` layers."""
    codings = [
        coding
        for value in values
        for token in value.split(",")
        if (coding := token.strip().lower()) and coding != "identity"
    ]
    if not codings:
        return None
    if len(codings) > MAX_CODINGS:
        raise DecodeError(f"{len(codings)} content codings: more than {MAX_CODINGS} layers")
    for coding in codings:
        if coding not in _DECODERS:
            why = "no Brotli decoder is installed" if coding == "br" else "unknown to fetch"
            raise DecodeError(f"cannot decode the content coding {coding!r}: {why}")
    layers = [_DECODERS[coding]() for coding in reversed(codings)]
    return layers[0] if len(layers) == 1 else _Layers(layers)
