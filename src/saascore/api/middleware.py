"""Middleware of every request.

`X-Request-ID` on every response: the caller's own when it sends a sane one, else a new one.

The id is in `request.state.request_id`, in the audit entries the request writes, and in every
error response's header, so a client's report can be matched with the server's records.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saascore.api.errors import error_response

__all__ = ["REQUEST_ID_HEADER", "InputGuardMiddleware", "RequestIdMiddleware"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"x-request-id"
            ),
            None,
        )
        request_id = sent if sent is not None and _SANE.match(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class InputGuardMiddleware:
    """Refuse, before anything reads them, bodies over `max_body_bytes` (413
    `payload_too_large`) and requests with a NUL character in the path, the query or the body
    (422 `invalid_character`).

    PostgreSQL text cannot hold U+0000 (SQLite can), so such a value would fail deep inside a
    transaction on one database and be stored on the other; refusing it at the door gives one
    clear answer on both.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await _refuse_nul(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                limit = self.max_body_bytes
                message_text = f"the body is over the limit of {limit} bytes"
                response = error_response(413, "payload_too_large", message_text, {"limit": limit})
                await response(scope, receive, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunk.get("body", b"") for chunk in chunks)
        if b"\x00" in body or _escaped_nul(body):
            await _refuse_nul(scope, receive, send)
            return
        await self.app(scope, _replay(chunks, receive), send)


def _escaped_nul(body: bytes) -> bool:
    """Whether a JSON text holds `\\u0000` as an escape (not as an escaped backslash followed
    by the letters `u0000`)."""
    start = body.find(b"\\u0000")
    while start != -1:
        backslashes = len(body[:start]) - len(body[:start].rstrip(b"\\"))
        if backslashes % 2 == 0:
            return True
        start = body.find(b"\\u0000", start + 1)
    return False


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


async def _refuse_nul(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        422, "invalid_character", "the request holds a NUL character (U+0000), which no field takes"
    )
    await response(scope, receive, send)
