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

from saascore.api.errors import InvalidCharacter, PayloadTooLarge, error_response

__all__ = ["REQUEST_ID_HEADER", "InputGuardMiddleware", "RequestIdMiddleware"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ESCAPE = re.compile(rb"\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


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
    `payload_too_large`), and requests with a NUL character in the path, the query or the body,
    or half a surrogate pair escaped in the body (422 `invalid_character`).

    PostgreSQL text cannot hold U+0000 (SQLite can), so such a value would fail deep inside a
    transaction on one database and be stored on the other; a lone surrogate cannot be encoded
    at all. Refusing them at the door gives one clear answer on both.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await _refuse_character(scope, receive, send)
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
                response = error_response(413, PayloadTooLarge.code, message_text, {"limit": limit})
                await response(scope, receive, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunk.get("body", b"") for chunk in chunks)
        if b"\x00" in body or _unstorable_escape(body):
            await _refuse_character(scope, receive, send)
            return
        await self.app(scope, _replay(chunks, receive), send)


def _unstorable_escape(body: bytes) -> bool:
    """Whether a JSON text escapes a character no database text takes: `\\u0000`, or half of
    a surrogate pair (`\\ud800` alone), which could not even be encoded as UTF-8. An escaped
    backslash followed by the letters (`\\\\u0000`) is text, not an escape."""
    paired = -1
    for match in _ESCAPE.finditer(body):
        start = match.start()
        if start == paired:
            continue
        backslashes = start - len(body[:start].rstrip(b"\\"))
        if backslashes % 2:
            continue
        code = int(match.group(1), 16)
        if code == 0 or 0xDC00 <= code <= 0xDFFF:
            return True
        low = _ESCAPE.match(body, match.end())
        if low is None or not 0xDC00 <= int(low.group(1), 16) <= 0xDFFF:
            return True
        paired = match.end()
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


async def _refuse_character(scope: Scope, receive: Receive, send: Send) -> None:
    message = "the request holds a NUL character or half a surrogate pair, which no field takes"
    response = error_response(422, InvalidCharacter.code, message)
    await response(scope, receive, send)
