"""The HTTP/1.1 protocol `extraction serve` runs under uvicorn: httptools with a bound on a request's head.

uvicorn's httptools protocol takes a request line and headers of any size: llhttp sets no limit and httptools
joins a header's pieces in memory until it ends, so one 8 MB header is read and kept whole before the app can
say anything (its h11 protocol stops at 16 KiB, but is several times slower). `BoundedHttpTools` counts the
bytes of each request's head as they arrive and answers 431 `headers_too_large` (the API's JSON error shape,
`connection: close`) once they pass `limits.max_header_bytes`, before the app runs. The parser does not say
where in a socket read a head ends, so while one is being read it gets the bytes in slices of at most 4 KiB
(a sixteenth of the limit) and the count is exact to one slice: a head is refused within a slice past the
limit, and one a slice below it always passes, whatever body follows it in the same read (a body goes to the
parser whole).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from service.errors import HeadersTooLarge

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed (uvicorn without [standard]): h11, with its own bound
    HttpToolsProtocol = None  # type: ignore[misc,assignment]


def headers_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"the request line and headers are larger than {limit} bytes", details={"limit_bytes": limit}
    )


def protocol_options(max_header_bytes: int) -> dict[str, Any]:
    """uvicorn.run() keyword arguments for a server whose request heads are bounded by `max_header_bytes`:
    the bounded httptools protocol, or h11 with the same bound where httptools is not installed."""
    if HttpToolsProtocol is None:
        return {"http": "h11", "h11_max_incomplete_event_size": max_header_bytes}
    # a partial of a module-level class: `--workers N` pickles it into each worker process
    return {"http": functools.partial(BoundedHttpTools, max_header_bytes=max_header_bytes)}


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        def __init__(self, *args: Any, max_header_bytes: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_header_bytes = max_header_bytes
            # While a head is being read, the parser gets the bytes in slices of `step`, so the count below is
            # exact to one slice whatever the socket reads hold at once (on loopback a whole head arrives in one).
            self.step = max(64, min(4096, max_header_bytes // 16))
            self._reading_head = True  # not inside a body: the next bytes belong to a request line or headers
            self._heads_done = 0
            self._head_bytes = 0
            self._refused = False

        def on_headers_complete(self) -> None:
            self._reading_head, self._head_bytes = False, 0
            self._heads_done += 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reading_head = True

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            start = 0
            while start < len(data) and self._reading_head and not self.transport.is_closing():
                piece = data[start : start + self.step]
                start += len(piece)
                heads_done = self._heads_done
                super().data_received(piece)
                if self._heads_done != heads_done or not self._reading_head:
                    continue  # a head ended in this slice (and the count with it)
                self._head_bytes += len(piece)
                if self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
                    self._refuse()
                    return
            if start < len(data) and not self.transport.is_closing():
                super().data_received(data[start:] if start else data)  # a body: all at once

        def _refuse(self) -> None:
            self._refused = True
            self.logger.warning("Request head over %d bytes refused (431).", self.max_header_bytes)
            error = headers_too_large(self.max_header_bytes)
            body = json.dumps(error.body(None)).encode()
            content = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
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
