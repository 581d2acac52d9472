"""A webhook receiver on loopback for the delivery tests and the benchmark.

A raw ASGI app served by uvicorn on 127.0.0.1 (a free port), which verifies every request with
`standardwebhooks.Webhook(secret).verify(body, headers)` against each secret it knows, and
records what came: the `webhook-id`, the event type, which secrets verified. Tell it how to
answer with `mode`: "ok" (204), "fail" (500 with `fail_body`) or "hang" (hold the request until
`release()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["Received", "Receiver", "receiving"]

Mode = Literal["ok", "fail", "hang"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@dataclass(frozen=True)
class Received:
    webhook_id: str
    type: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The names of the secrets (see `Receiver.secrets`) whose verification passed.
    verified_by: frozenset[str]
    at: float


@dataclass
class Receiver:
    """The app; `url` once serving. `secrets` maps a name to a `whsec_...` secret."""

    secrets: dict[str, str] = field(default_factory=dict)
    mode: Mode = "ok"
    received: list[Received] = field(default_factory=list)
    #: Requests that failed verification with every secret (should stay empty).
    rejected: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    #: The body of a "fail" answer.
    fail_body: bytes = b"receiver says no"
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _waiters: list[tuple[Callable[[], bool], asyncio.Event]] = field(default_factory=list)

    def release(self) -> None:
        self._release.set()

    def ids(self) -> list[str]:
        return [item.webhook_id for item in self.received]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until `predicate()` holds (checked at each request), or TimeoutError."""
        if predicate():
            return
        event = asyncio.Event()
        self._waiters.append((predicate, event))
        async with asyncio.timeout(timeout):
            await event.wait()

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        verified = set()
        for name, secret in self.secrets.items():
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.add(name)
        if not verified:
            self.rejected.append(headers)
            await _answer(send, 400)
            return
        payload = json.loads(body)
        self.received.append(
            Received(
                webhook_id=headers["webhook-id"],
                type=payload["type"],
                body=payload,
                headers=headers,
                verified_by=frozenset(verified),
                at=time.perf_counter(),
            )
        )
        self.arrived.set()
        for predicate, event in list(self._waiters):
            if predicate():
                event.set()
                self._waiters.remove((predicate, event))
        if self.mode == "hang":
            await self._release.wait()
            await _answer(send, 204)
        elif self.mode == "fail":
            await _answer(send, 500, self.fail_body)
        else:
            await _answer(send, 204)


async def _answer(
    send: Callable[[Message], Awaitable[None]], status: int, body: bytes = b""
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def receiving(receiver: Receiver, path: str = "/hooks") -> AsyncIterator[Receiver]:
    """Serve `receiver` on 127.0.0.1 (a free port) while the block runs; `receiver.url`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        receiver,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    receiver.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield receiver
    finally:
        receiver.release()
        server.should_exit = True
        await task
        sock.close()
