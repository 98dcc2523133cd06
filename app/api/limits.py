"""Request limits enforced before any route runs, as a pure ASGI middleware answering
``{"detail": ...}``: 413 for a body over MAX_BODY_BYTES (a declared length unread, a
chunked one as soon as it passes), 414 for a query over MAX_QUERY_BYTES, 400 for a bad
Content-Length, 415 for a non-empty body that is not JSON (FastAPI alone would blame the
content with a 422, not the media type).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def send_error(send: Send, status: int, detail: Any) -> None:
    """A JSON error response; Connection: close since the body may be unread."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_query_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_query_bytes = max_query_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if len(query) > self.max_query_bytes:
            await send_error(
                send,
                414,
                f"the query string has {len(query)} bytes; the limit is {self.max_query_bytes}",
            )
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, "Content-Length must be a non-negative integer")
                return
            if int(declared) > self.max_body_bytes:
                await send_error(send, 413, self._too_large(int(declared)))
                return
        has_body = (declared is not None and int(declared) > 0) or (
            "chunked" in headers.get("transfer-encoding", "").lower()
        )
        content_type = headers.get("content-type", "")
        if has_body and scope["method"] in BODY_METHODS and not is_json_media_type(content_type):
            shown = repr(content_type[:100]) if content_type else "no Content-Type"
            await send_error(
                send,
                415,
                f"request bodies must be sent as Content-Type: application/json, not {shown}",
            )
            return
        # read (and count) the whole body here, as FastAPI would before the route anyway
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                await send_error(send, 413, self._too_large(received, streamed=True))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = f"at least {size}" if streamed else str(size)
        return f"the request body has {what} bytes; the limit is {self.max_body_bytes}"


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body once, then pass through (e.g. http.disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
