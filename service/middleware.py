"""ASGI middleware in front of the routes, and what the API says of a body it cannot read.

Both checks run before FastAPI reads a body. FastAPI parses the JSON before any dependency runs, so a key
checked in a dependency comes after the 400 for a malformed body (which tells a caller without a key the
API's shape); and an error raised while FastAPI reads the body becomes its generic 400, so a size limit
enforced there cannot answer 413.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from asgi_correlation_id import correlation_id
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import Authenticator
from service.errors import BadRequest, ExtractionError, PayloadTooLarge

PRINCIPAL_KEY = "extraction.principal"  # where ApiKeyGate leaves the caller's Principal in the ASGI scope
MAX_DEPTH = 254  # levels of arrays and objects orjson (our JSON encoder) can write: deeper cannot go upstream
COUNTED = "/v1/extract"  # the paths counted in extraction_requests_total


def error_response(error: ExtractionError) -> JSONResponse:
    """The one JSON shape of every error."""
    return JSONResponse(error.body(correlation_id.get()), status_code=error.status, headers=error.headers)


def unreadable_body(cause: BaseException | None) -> BadRequest:
    """400 `bad_request` for a body FastAPI could not parse, saying why (`cause`: what its parser raised)."""
    if isinstance(cause, UnicodeDecodeError):
        return BadRequest(
            f"the body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}); "
            "send JSON encoded as UTF-8",
            details={"reason": "invalid_utf8", "offset": cause.start},
        )
    if isinstance(cause, RecursionError):
        return BadRequest(
            f"the body is nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)",
            details={"reason": "too_deep", "max_depth": MAX_DEPTH},
        )
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        digits = sys.get_int_max_str_digits()
        return BadRequest(
            f"the body has an integer with more than {digits} digits", details={"reason": "integer_too_long"}
        )
    return BadRequest("the body could not be read as JSON", details={"reason": "unreadable"})


class ApiKeyGate:
    """With API keys on: 401 for a `/v1/` request without a valid key before its body is read, counted as
    rejected on the extraction paths; otherwise the caller's Principal goes into the scope for the routes."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, on_reject: Callable[[], None], prefix: str = "/v1/"
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.on_reject = on_reject
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.authenticator.enabled or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        try:
            scope[PRINCIPAL_KEY] = self.authenticator.authenticate(Headers(scope=scope).get("authorization"))
        except ExtractionError as e:
            if scope["path"].startswith(COUNTED):
                self.on_reject()
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Reads the whole body before the app runs: 413 `payload_too_large` over `max_bytes`, by Content-Length
    at once or by counting a chunked body; the app then gets the body as one message. On the extraction paths
    a 413 counts as `rejected` and a caller gone before its body arrived as `cancelled`."""

    def __init__(self, app: ASGIApp, max_bytes: int, count: Callable[[str], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            # Nothing outside the API reads a body: pass it through unread rather than buffer it for anyone.
            await self.app(scope, receive, send)
            return
        counted = scope["path"].startswith(COUNTED)
        headers = Headers(scope=scope)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if has_body and encoding not in ("", "identity"):
            # a gzip body would otherwise reach the UTF-8 check below and be called UTF-16
            if counted:
                self.count("rejected")
            error = BadRequest(
                f"Content-Encoding {encoding[:40]!r} is not accepted; send the JSON uncompressed",
                details={"reason": "content_encoding"},
            )
            await error_response(error)(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, counted)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if counted:
                    self.count("cancelled")
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, counted)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        nul = body.find(b"\x00")
        if nul >= 0 or body.startswith((b"\xff\xfe", b"\xfe\xff")):
            # UTF-16 or UTF-32: Python's JSON parser would guess the encoding and accept it; JSON on the wire is
            # UTF-8 (RFC 8259), where a raw NUL byte cannot occur.
            if counted:
                self.count("rejected")
            error = BadRequest(
                "the body is not UTF-8 (it looks like UTF-16 or UTF-32: a byte-order mark or NUL bytes); "
                "send JSON encoded as UTF-8",
                details={"reason": "invalid_utf8", "offset": max(nul, 0)},
            )
            await error_response(error)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            # The body once, then the server's own messages (the route watches them for a disconnect).
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, counted: bool) -> None:
        if counted:
            self.count("rejected")
        error = PayloadTooLarge(
            f"request body is larger than {self.max_bytes} bytes", details={"limit_bytes": self.max_bytes}
        )
        await error_response(error)(scope, receive, send)
