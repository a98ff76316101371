"""A scriptable OpenAI-compatible upstream on loopback, for fault injection and gateway benchmarks.

    python -m loadtest.mock_upstream --port 9100      # answers every call with a schema-valid object

Scripted replies (`enqueue`) are served first, in order: status codes with headers (429 + Retry-After),
delays (hangs past a timeout), slow bodies (`trickle_s`), wrong or broken JSON, `finish_reason: length`,
raw bodies, connections reset mid-body. With the queue empty it answers with the smallest object valid
against the request's `response_format` schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Reply:
    """One scripted answer. `content` is the assistant text; `body` replaces the whole HTTP body."""

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    finish_reason: str = "stop"
    body: bytes | None = None
    usage: tuple[int, int] | None = None
    reset: bool = False  # send headers and part of the body, then drop the connection
    hold: threading.Event | None = None  # answer only once the test sets it (a request held in flight)
    trickle_s: float = 0.0  # headers at once, then the body in 10 pieces, this long apart (a slow stream)


def minimal_instance(schema: dict[str, Any] | None) -> Any:
    """The smallest value valid against common schemas (objects, enums, nullable types, dates)."""
    if not schema:
        return {}
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_instance(sub) for name, sub in props.items() if name in schema.get("required", props)}
    if kind == "array":
        return [minimal_instance(schema.get("items"))] * schema.get("minItems", 0)
    if kind == "string":
        if schema.get("format") == "date":
            return "2024-01-01"
        if schema.get("pattern") == "^[A-Z]{3}$":
            return "EUR"
        return "x" * max(1, schema.get("minLength", 1))
    return {"number": 1.0, "integer": 1, "boolean": True, "null": None}.get(kind)


class MockUpstream:
    """The upstream's state: a reply queue and the requests it received."""

    def __init__(
        self, model: str = "mock-model", chaos: dict[str, float] | None = None, seed: int = 0, record: bool = True
    ) -> None:
        self.model = model
        # Tests read `requests`; a benchmark upstream keeps none (a list of every payload grows without end and
        # makes the garbage collector's full passes ever slower: hundreds of ms of latency outliers).
        self.record = record
        self.received = 0
        self.tokenize_status = 200
        # With the queue empty, each call fails at random with these probabilities: "500", "429", "hang"
        # (sleeps `hang_s`), "reset" (mid-body), "broken" (truncated JSON body). For soak tests.
        self.chaos = chaos or {}
        self.hang_s = 5.0
        self._rng = random.Random(seed)
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> bool:
        """Block (another thread) until `count` requests have arrived in total; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.received >= count, timeout=timeout_s)

    def _chaos_reply(self) -> Reply | None:
        roll = self._rng.random()
        for fault, p in self.chaos.items():
            if roll < p:
                return {
                    "500": Reply(status=500),
                    "429": Reply(status=429, headers={"retry-after-ms": "50"}),
                    "hang": Reply(content="{}", delay_s=self.hang_s),
                    "reset": Reply(reset=True),
                    "broken": Reply(body=b'{"id": "x", "choices": [{"message": {"content": "{\\"comp'),
                }[fault]
            roll -= p
        return None

    async def _models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _tokenize(self, request: Request) -> JSONResponse:
        """vLLM's token counter, with one token per whitespace-separated word; `tokenize_status` breaks it."""
        if self.tokenize_status != 200:
            return JSONResponse({"error": {"message": "no tokenizer here"}}, status_code=self.tokenize_status)
        payload = json.loads(await request.body())
        texts = [payload["prompt"]] if "prompt" in payload else [m["content"] for m in payload["messages"]]
        return JSONResponse({"count": sum(len(t.split()) for t in texts), "max_model_len": 2048})

    async def _health(self, _: Request) -> Response:
        return Response(status_code=200)

    async def _chat(self, request: Request) -> Response:
        payload = json.loads(await request.body())
        with self._arrived:
            self.received += 1
            if self.record:
                self.requests.append(payload)
            self._arrived.notify_all()
        reply = self.replies.popleft() if self.replies else self._chaos_reply()
        if reply is None:
            reply = Reply(content=json.dumps(minimal_instance(_schema_of(payload)), separators=(",", ":")))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.hold is not None:
            await asyncio.to_thread(reply.hold.wait, 60)
        if reply.reset:
            return _ResetMidBody()  # type: ignore[return-value]
        if reply.body is not None:
            return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type="application/json")
        if reply.status != 200:
            error = {"error": {"message": f"mock upstream status {reply.status}", "type": "mock", "code": None}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        content = reply.content or ""
        prompt_chars = sum(len(m.get("content") or "") for m in payload.get("messages", []))
        usage = reply.usage or (max(1, prompt_chars // 4), max(1, len(content) // 4))
        completion = JSONResponse(
            {
                "id": f"chatcmpl-{self.received}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
            },
            headers=reply.headers,
        )
        return _Trickle(completion.body, reply.trickle_s) if reply.trickle_s else completion  # type: ignore[return-value]


class _Trickle:
    """An ASGI response that sends its headers at once and its body in 10 pieces, `pause_s` apart."""

    def __init__(self, body: bytes, pause_s: float) -> None:
        self.body = body
        self.pause_s = pause_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = max(1, -(-len(self.body) // 10))
        for start in range(0, len(self.body), step):
            await asyncio.sleep(self.pause_s)
            more = start + step < len(self.body)
            await send({"type": "http.response.body", "body": self.body[start : start + step], "more_body": more})


class _ResetMidBody:
    """An ASGI response that promises 1000 bytes, sends 18, and dies: the client sees a reset mid-body."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "x", "choi', "more_body": True})
        raise ConnectionResetError("mock upstream: connection reset mid-body")


def _schema_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    fmt = payload.get("response_format") or {}
    schema: dict[str, Any] | None = (fmt.get("json_schema") or {}).get("schema")
    return schema


class ServerThread:
    """Runs an ASGI app under uvicorn on a loopback socket bound before start (so no wait is needed)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(MockUpstream(record=False).app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
