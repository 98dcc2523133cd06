"""Request limits enforced before any route runs: body size, query length, content type.

A pure ASGI middleware (no BaseHTTPMiddleware: it must not buffer responses or break
streaming) that answers with FastAPI's error shape, ``{"detail": ...}``:

- 413 when the body is larger than ``Settings.max_body_bytes``: a declared
  ``Content-Length`` over the limit is refused without reading a byte, and a body sent
  without one (chunked) is counted as it arrives and refused as soon as it passes the
  limit. The route only ever sees a body that is known to fit.
- 414 when the query string is longer than ``Settings.max_query_bytes`` (no legitimate
  query comes close: 100 movie ids take under 3 KiB).
- 400 for a ``Content-Length`` that is not a non-negative integer.
- 415 for a non-empty body whose ``Content-Type`` is not JSON (``application/json`` or
  ``application/*+json``), a missing ``Content-Type`` included. FastAPI on its own would
  not parse such a body as JSON and would answer 422 "Input should be a valid
  dictionary", which blames the content rather than the media type; 415 says what to
  fix. Requests without a body (GET, DELETE, POST /admin/retrain with no overrides) need
  no ``Content-Type``.

Invalid JSON stays FastAPI's 422 (``json_invalid``) and unknown fields stay 422 through
``extra="forbid"`` on every request body: a typo must not silently become a default.
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
    """A complete JSON error response; Connection: close since the body may be unread."""
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
    """Refuses oversize bodies and query strings and non-JSON bodies with a clear 4xx."""

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
        # Read the whole body here, counting bytes, so an over-limit stream is refused
        # before the route starts (FastAPI reads the whole body before calling it anyway).
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
    """Hand the buffered body to the app once, then pass through (e.g. http.disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
