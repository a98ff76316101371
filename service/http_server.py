"""The HTTP/1.1 protocol `extraction serve` runs under uvicorn: httptools with bounds on a request's head.

uvicorn's httptools protocol takes a request line and headers of any size and at any pace: llhttp sets no
limit, httptools joins a header's pieces in memory until it ends (one 8 MB header is read and kept whole before
the app can say anything), and a connection that sends half a head, or half a body, or nothing, is held for
ever (uvicorn's keep-alive timeout starts only after a response). `BoundedHttpTools` adds:

- 431 `headers_too_large` once a head passes `limits.max_header_bytes` (one header or many). While a head is
  read the parser gets the bytes in slices of at most 4 KiB, each checked before it is parsed: the head's end
  (the first CRLF CRLF) is found in the slice, so a head is refused exactly when it is over the limit, and one
  within it passes whatever body follows in the same read. A head pipelined behind another request in the same
  read is counted from the next slice on (up to one slice, or one 64 KiB body slice, is not counted).
- 408 `request_timeout` when a head is not complete `limits.header_timeout_s` after the connection opened or
  its first byte arrived, or a body sends nothing for `limits.body_timeout_s`. Waiting for an answer is not
  timed: a request the app takes minutes over is never cut.

Both answer with the API's JSON error shape and `connection: close`, before the app sees the request.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from service.errors import ExtractionError, HeadersTooLarge, RequestTimeout

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed (uvicorn without [standard]): h11, with its own bound
    HttpToolsProtocol = None  # type: ignore[misc,assignment]


def headers_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"the request line and headers are larger than {limit} bytes", details={"limit_bytes": limit}
    )


def protocol_options(max_header_bytes: int, header_timeout_s: float, body_timeout_s: float) -> dict[str, Any]:
    """uvicorn.run() keyword arguments for a server with these bounds: the bounded httptools protocol, or
    where httptools is not installed h11 with the same size bound (and no read timeouts: h11 has none)."""
    if HttpToolsProtocol is None:
        return {"http": "h11", "h11_max_incomplete_event_size": max_header_bytes}
    # a partial of a module-level class: `--workers N` pickles it into each worker process
    protocol = functools.partial(
        BoundedHttpTools,
        max_header_bytes=max_header_bytes,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
    )
    return {"http": protocol}


if HttpToolsProtocol is not None:
    BODY_SLICE = 65_536

    class BoundedHttpTools(HttpToolsProtocol):
        def __init__(
            self,
            *args: Any,
            max_header_bytes: int,
            header_timeout_s: float,
            body_timeout_s: float,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.max_header_bytes = max_header_bytes
            self.header_timeout_s = header_timeout_s
            self.body_timeout_s = body_timeout_s
            self.step = max(64, min(4096, max_header_bytes // 16))
            self._reading_head = True  # not inside a body: the next bytes belong to a request line or headers
            self._heads_done = 0
            self._head_bytes = 0
            self._tail = b""  # the head's last 3 bytes so far: its end may straddle two slices
            self._timer: asyncio.TimerHandle | None = None
            self._refused = False
            self._pending: ExtractionError | None = None  # a refusal waiting for earlier requests' answers

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(self.header_timeout_s, "the request line and headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._reading_head, self._head_bytes, self._tail = False, 0, b""
            self._heads_done += 1
            self._disarm()
            super().on_headers_complete()
            if not self.pipeline:  # a request queued behind another is not read until that one is answered
                self._arm(self.body_timeout_s, "the body")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()
            self._reading_head = True

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if not self._reading_head and self._timer is not None:
                self._arm(self.body_timeout_s, "the body")  # the body's clock restarts with every read
            elif self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm(self.header_timeout_s, "the request line and headers")  # a new request's first bytes
            start = 0
            while start < len(data) and not self.transport.is_closing():
                if not self._reading_head:
                    piece = data[start : start + BODY_SLICE]
                    start += len(piece)
                    super().data_received(piece)
                    continue
                piece = data[start : start + self.step]
                start += len(piece)
                end = (self._tail + piece).find(b"\r\n\r\n")
                size = len(piece) if end < 0 else end + 4 - len(self._tail)
                if self._head_bytes + size > self.max_header_bytes:
                    self._refuse(headers_too_large(self.max_header_bytes))
                    return
                heads_done = self._heads_done
                super().data_received(piece)
                if self._heads_done == heads_done and self._reading_head:
                    self._head_bytes += len(piece)
                    self._tail = (self._tail + piece)[-3:]

        def _arm(self, seconds: float, part: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._timed_out, seconds, part)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _timed_out(self, seconds: float, part: str) -> None:
            self._timer = None
            if self.transport.is_closing() or self._refused:
                return
            what = "did not arrive within" if part.startswith("the request") else "sent nothing for"
            self._refuse(RequestTimeout(f"{part} {what} {seconds:g} s", details={"timeout_s": seconds, "part": part}))

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._pending is not None and self._answered_all():
                self._send(self._pending)

        def _answered_all(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

        def _refuse(self, error: ExtractionError) -> None:
            self._refused = True
            self._disarm()
            self.logger.warning("Request refused before the app (%d %s).", error.status, error.code)
            if not self._reading_head:  # this request's own body is too slow: it is the one answered
                if self.cycle is not None and self.cycle.response_started:
                    self.transport.close()
                else:
                    self._send(error)
            elif self._answered_all():
                self._send(error)
            else:  # requests before this one on the connection get their answers first, then this one
                self._pending = error
                self.flow.pause_reading()

        def _send(self, error: ExtractionError) -> None:
            self._pending = None
            body = json.dumps(error.body(None)).encode()
            reason = {431: b"Request Header Fields Too Large", 408: b"Request Timeout"}[error.status]
            content = [b"HTTP/1.1 %d %s\r\n" % (error.status, reason)]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()
