"""Webhook delivery: the dispatcher beside a bare httpx client posting the same signed bodies.

On PostgreSQL, to a receiver on loopback (uvicorn in a process of its own, answering 204 and
noting when each `webhook-id` arrived), with one organisation and one endpoint:
  (c) the ceiling: a bare `httpx.AsyncClient`, 32 requests at once, posting signed bodies;
  (a) backlog: BENCH_BACKLOG events (default 3,000) committed first, then 1 and 4
      `saascore events dispatch` processes started: deliveries/s, first arrival to last;
  (b) at rate: with 1 and 4 dispatchers running and idle (polling every 60 s, so only a
      commit's NOTIFY wakes them), events committed at BENCH_RATE/s (default 1,000; 20 per
      transaction) for BENCH_SECONDS (default 3): deliveries/s, and the time from each event's
      commit to its arrival at the receiver (p50, p99).
Each figure is printed beside the ceiling as a ratio. The dispatchers run with the default
settings (32 requests at once each). SAASCORE_TEST_POSTGRES_URL picks the server (default
postgresql://postgres@127.0.0.1:5432/test); everything lives in a schema of its own, dropped
at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa

from saascore import Saascore, Settings
from saascore.events.bus import Event
from saascore.events.catalog import UsageThresholdReached
from saascore.events.dispatcher import compact_json
from saascore.events.signing import message_id, signature_headers
from saascore.migrations import migrate
from saascore.models import WebhookEndpoint
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
RATE = int(os.environ.get("BENCH_RATE", "1000"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "3000"))
PER_TRANSACTION = 20
CEILING_CONCURRENCY = 32
SAASCORE = str(Path(sys.executable).parent / "saascore")

Scope = MutableMapping[str, Any]


# --- the receiver (its own process) ---------------------------------------------------------------
def serve_receiver(port: int) -> None:
    """`python bench/webhooks.py --receiver PORT`: note each webhook-id's arrival (wall time)."""
    import uvicorn

    arrivals: dict[str, float] = {}

    async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if scope["path"] == "/stats":
            body = json.dumps(arrivals).encode()
            arrivals.clear()
            status = 200
        else:
            for key, value in scope["headers"]:
                if key == b"webhook-id":
                    arrivals.setdefault(value.decode(), time.time())
            body, status = b"", 204
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_up(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"the receiver at {url} did not start")


async def collect(base: str) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        arrivals: dict[str, float] = (await client.get(f"{base}/stats")).json()
        return arrivals


# --- measurements ---------------------------------------------------------------------------------
def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def event() -> UsageThresholdReached:
    return UsageThresholdReached(
        metric="tokens",
        period_start=datetime(2026, 1, 1, tzinfo=UTC),
        threshold_percent=80,
        limit=1_000_000,
        used=800_000,
    )


async def ceiling(base: str, secret: str, count: int) -> float:
    """Requests/s of a bare httpx client posting `count` signed bodies, 32 at once."""
    bodies = [
        (message_id(uuid.uuid4()), compact_json(Event(event(), uuid.uuid4()).body()))
        for _ in range(count)
    ]
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=CEILING_CONCURRENCY), timeout=10
    ) as client:

        async def worker() -> None:
            while queue:
                webhook_id, body = queue.pop()
                headers = {
                    "content-type": "application/json",
                    **signature_headers(webhook_id, datetime.now(UTC), body, [secret]),
                }
                response = await client.post(f"{base}/hooks", content=body, headers=headers)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CEILING_CONCURRENCY)))
        elapsed = time.perf_counter() - started
    await collect(base)
    return count / elapsed


async def commit_backlog(core: Saascore, org: uuid.UUID, count: int) -> None:
    for start in range(0, count, 500):
        async with core.database.transaction() as s:
            await core.events.publish(
                s, [Event(event(), org) for _ in range(min(500, count - start))]
            )


class Dispatchers:
    """`count` `saascore events dispatch` processes, started and ready (their engine built,
    their first look at the outbox taken) when `start` returns; SIGTERM stops them."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env, self.count = env, count
        self.processes: list[asyncio.subprocess.Process] = []
        self._drains: list[asyncio.Task[bytes]] = []

    async def start(self) -> None:
        for _ in range(self.count):
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    SAASCORE, "events", "dispatch", env=self.env, stderr=subprocess.PIPE
                )
            )
        for process in self.processes:  # a loaded machine may take many seconds to start them
            assert process.stderr is not None
            async with asyncio.timeout(120):
                line = await process.stderr.readline()
            if not line.startswith(b"dispatching"):
                raise RuntimeError(f"a dispatcher failed: {line.decode().strip()}")
            self._drains.append(asyncio.create_task(process.stderr.read()))
        await asyncio.sleep(1)  # LISTEN connected

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        for drain in self._drains:
            drain.cancel()


async def wait_for(base: str, ids: set[str], timeout: float) -> dict[str, float]:
    arrivals: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while not ids <= arrivals.keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        arrivals.update(await collect(base))
    return arrivals


async def backlog(
    core: Saascore, org: uuid.UUID, base: str, env: dict[str, str], dispatchers: int
) -> float:
    """Deliveries/s of `dispatchers` processes draining a backlog of BACKLOG events."""
    async with core.database.transaction() as s:  # mark the earlier events done
        await s.execute(sa.text("UPDATE outbox_events SET dispatched_at = now()"))
    before = time.time()
    await commit_backlog(core, org, BACKLOG)
    async with core.database.session(readonly=True) as s:
        rows = await s.execute(sa.text("SELECT id FROM outbox_events WHERE dispatched_at IS NULL"))
        ids = {message_id(row[0]) for row in rows}
    processes = Dispatchers(env, dispatchers)
    try:
        await processes.start()
        arrivals = await wait_for(base, ids, timeout=30)
    finally:
        await processes.stop()
    times = sorted(t for key, t in arrivals.items() if key in ids and t >= before)
    if len(times) < len(ids):
        print(f"   ({len(ids) - len(times)} of {len(ids)} not delivered in time)")
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def at_rate(
    core: Saascore, org: uuid.UUID, base: str, env: dict[str, str], dispatchers: int
) -> tuple[float, float, float]:
    """(deliveries/s, p50 s, p99 s from commit) with events committed at RATE/s."""
    processes = Dispatchers({**env, "SAASCORE_WEBHOOK_POLL_SECONDS": "60"}, dispatchers)
    try:
        await processes.start()  # started, listening, idle
        await collect(base)
        committed: dict[str, float] = {}
        interval = PER_TRANSACTION / RATE
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < SECONDS:
            async with core.database.transaction() as s:
                batch = [await core.events.emit(s, org, event()) for _ in range(PER_TRANSACTION)]
            now = time.time()
            committed.update((message_id(item.id), now) for item in batch)
            sent += PER_TRANSACTION
            ahead = started + sent / RATE - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(min(ahead, interval))
        commit_seconds = time.perf_counter() - started
        arrivals = await wait_for(base, set(committed), timeout=30)
    finally:
        await processes.stop()
    latencies = [arrivals[key] - at for key, at in committed.items() if key in arrivals]
    if len(latencies) < len(committed):
        print(f"   ({len(committed) - len(latencies)} of {len(committed)} not delivered)")
    if not latencies:
        return 0.0, float("nan"), float("nan")
    first = min(committed.values())
    last = max(arrivals[key] for key in committed if key in arrivals)
    achieved = len(committed) / commit_seconds
    if achieved < RATE * 0.95:
        print(f"   (committed only {achieved:,.0f} events/s)")
    return (
        len(latencies) / (last - first),
        percentile(latencies, 50),
        percentile(latencies, 99),
    )


async def main(port: int) -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        _env_file=None, database_url=URL, database_schema=schema, webhooks_allow_private=True
    )
    env = {
        **os.environ,
        "DATABASE_URL": URL,
        "SAASCORE_DATABASE_SCHEMA": schema,
        "SAASCORE_WEBHOOKS_ALLOW_PRIVATE": "true",
        "SAASCORE_ENVIRONMENT": "test",
    }
    try:
        await wait_until_up(f"{base}/stats")
        async with Saascore(settings) as core:
            await migrate.upgrade(core.database)
            await core.plans.load_catalog(read_catalog())
            org = (await core.orgs.create(name="bench", plan="enterprise")).id
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            async with core.database.transaction() as s:
                s.add(
                    WebhookEndpoint(
                        organization_id=org,
                        id=uuid.uuid4(),
                        url=f"{base}/hooks",
                        event_types=[],
                        secret=secret,
                    )
                )
            print("the machine is shared with other work: figures vary from run to run")
            roof = await ceiling(base, secret, 2000)
            print(f"(c) ceiling, bare httpx client, {CEILING_CONCURRENCY} at once: {roof:8,.0f}/s")
            for count in (1, 4):
                rate = await backlog(core, org, base, env, count)
                print(
                    f"(a) {count} dispatcher{'s' if count > 1 else ' '}, backlog of {BACKLOG:,}:"
                    f"   {rate:8,.0f} deliveries/s   a/c {rate / roof:5.2f}"
                )
            for count in (1, 4):
                rate, p50, p99 = await at_rate(core, org, base, env, count)
                print(
                    f"(b) {count} dispatcher{'s' if count > 1 else ' '}, {RATE:,} events/s "
                    f"committed: {rate:8,.0f} deliveries/s   b/c {rate / roof:5.2f}   "
                    f"commit to delivery p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"
                )
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        serve_receiver(int(sys.argv[2]))
    else:
        receiver_port = free_port()
        receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(receiver_port)])
        try:
            asyncio.run(main(receiver_port))
        finally:
            receiver.terminate()
            receiver.wait(timeout=10)
