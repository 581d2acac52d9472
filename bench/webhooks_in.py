"""Inbound payment-provider webhooks over HTTP: the real app's intake beside a bare endpoint.

BENCH_ORGS organisations (default 200), each a Stripe customer with a subscription on the pro
plan (made through the intake itself). Then signed Stripe-shaped
`customer.subscription.updated` bodies, each a real change (cancel at the period's end, then
not, in turn, one second later each time), with copies of bodies already sent mixed in at
20 %, are POSTed over HTTP by BENCH_CONCURRENCY clients at once (default 32), each on a
kept-alive connection of its own (bench/http_api.py's `Connection`: httpx would measure
itself), to two servers, each a uvicorn process of its own:

  (a) `saascore serve`, `POST /v1/webhooks/stripe`: verified with the stripe SDK, stored once
      in `webhook_events` and applied through billing (the subscription, its events and audit
      entries), 200 after the commit;
  (b) the reference, a bare FastAPI endpoint written here (`python bench/webhooks_in.py
      --bare PORT`): the stripe SDK verifies the signature, and the event row is inserted
      into a table shaped like `webhook_events` (INSERT ... ON CONFLICT DO NOTHING) through a
      SQLAlchemy session, 200 after the commit.

Both get the same requests (BENCH_REQUESTS, default 3,000, after 200 to warm up), on the same
database, with a pool of a connection per client each. The app's webhook dispatcher is off:
delivering the outbox to tenants' endpoints is bench/webhooks.py's measure, not the intake's.
Printed: requests per second of each and the ratio (a) / (b) (goal >= 0.5), with the CPU time
each server process and the PostgreSQL backends serving it spent per request (read from /proc,
so on Linux with the database on this machine; steadier than requests/s on a shared machine).

BENCH_DATABASE=postgresql (default; SAASCORE_TEST_POSTGRES_URL picks the server, default
postgresql://postgres@127.0.0.1:5432/test, in a schema of its own) or sqlite (a file in a
temporary directory; no database CPU is shown).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
import stripe
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr

from http_api import (
    Connection,
    Target,
    backends_cpu,
    cpu_seconds,
    free_port,
    server,
    wait_until_up,
)
from saascore import Saascore, Settings
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.migrations import migrate
from saascore.models import (
    Organization,
    PlanPrice,
    Subscription,
    SubscriptionPlan,
    UsageLimits,
    WebhookEvent,
)
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKEND = os.environ.get("BENCH_DATABASE", "postgresql")
ORGS = int(os.environ.get("BENCH_ORGS", "200"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "3000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
WARMUP = 200
DUPLICATES = 0.2
SCHEMA = "bench_webhooks_in"
SECRET = "whsec_bench_" + "s" * 24
SCRIPT = str(Path(__file__).resolve())
PRICE = "price_bench_pro_monthly"
PERIOD = 30 * 86_400

BARE = sa.Table(
    "bench_webhook_events",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("event_id", sa.String(255), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("payload", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("provider", "event_id"),
)


def signed(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers Stripe would send: `t=...,v1=HMAC-SHA256(t.body)`."""
    body = json.dumps(payload).encode()
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "stripe-signature": f"t={t},v1={mac}"}


def subscription(org: uuid.UUID, n: int, start: int, *, cancel: bool) -> dict[str, Any]:
    sub_id = f"sub_bench_{n}"
    return {
        "id": sub_id,
        "object": "subscription",
        "cancel_at_period_end": cancel,
        "cancel_at": start + PERIOD if cancel else None,
        "canceled_at": None,
        "created": start,
        "customer": f"cus_bench_{n}",
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_bench_{n}",
                    "object": "subscription_item",
                    "current_period_start": start,
                    "current_period_end": start + PERIOD,
                    "price": {"id": PRICE, "object": "price", "currency": "usd"},
                    "quantity": 1,
                }
            ],
            "has_more": False,
        },
        "metadata": {"organization_id": str(org)},
        "status": "active",
        "trial_end": None,
    }


def stripe_event(type_: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "type": type_,
    }


def deliveries(orgs: Sequence[uuid.UUID], count: int, start: int, first: int) -> list[Any]:
    """`count` deliveries: updates to the organisations in turn, each a change, one second
    after the last, and at 20 % a copy of a body already in the list."""
    made: list[tuple[bytes, dict[str, str]]] = []
    sent: list[tuple[bytes, dict[str, str]]] = []
    rng = random.Random(first)
    n = first
    while len(sent) < count:
        if made and rng.random() < DUPLICATES:
            sent.append(rng.choice(made))
            continue
        index = n % len(orgs)
        round_ = n // len(orgs)
        obj = subscription(orgs[index], index, start, cancel=round_ % 2 == 0)
        made.append(signed(stripe_event("customer.subscription.updated", obj, start + n + 1)))
        sent.append(made[-1])
        n += 1
    return sent


async def drive(port: int, path: str, requests: list[Any]) -> float:
    """POST every delivery, CONCURRENCY at once, each client on a connection of its own; the
    seconds it took. Every answer is 200."""
    queue = list(reversed(requests))
    connections = [await Connection.open(port) for _ in range(CONCURRENCY)]

    async def client(connection: Connection) -> None:
        while queue:
            body, headers = queue.pop()
            status, answer = await connection.request("POST", path, headers, body)
            if status != 200:
                raise RuntimeError(f"{path}: {status} {answer[:300]!r}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(connection) for connection in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()


def bare_app() -> FastAPI:
    """(b): verify with the stripe SDK, insert the event row, answer after the commit (its
    settings, as `saascore serve`'s, from the environment)."""
    database = Database(Settings())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await database.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/webhooks/stripe")
    async def receive(request: Request) -> Response:
        body = await request.body()
        text = body.decode()
        try:
            stripe.WebhookSignature.verify_header(
                text, request.headers.get("stripe-signature", ""), SECRET, tolerance=300
            )
        except stripe.SignatureVerificationError:
            return Response(status_code=400)
        payload = json.loads(text)
        async with database.transaction() as s:
            await s.execute(
                insert(s, BARE)
                .values(
                    id=new_id(),
                    provider="stripe",
                    event_id=payload["id"],
                    event_type=payload["type"],
                    payload=payload,
                    outcome="processed",
                    received_at=datetime.now(UTC),
                )
                .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            )
        return Response(status_code=200)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def seed(core: Saascore, start: int) -> list[uuid.UUID]:
    """ORGS organisations, each with a Stripe subscription made through the intake."""
    async with core.database.transaction() as s:
        plan_id = sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == "pro")
        await s.execute(
            sa.update(PlanPrice)
            .where(
                PlanPrice.plan_id == plan_id.scalar_subquery(),
                PlanPrice.billing_cycle == BillingCycle.MONTHLY,
                PlanPrice.currency == "USD",
            )
            .values(stripe_price_id=PRICE)
        )
        free = await s.scalar(sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == "free"))
        orgs = [new_id() for _ in range(ORGS)]
        await s.execute(
            sa.insert(Organization),
            [
                {"id": org, "name": f"bench {n}", "slug": f"bench-{n}", "plan_id": free}
                for n, org in enumerate(orgs)
            ],
        )
        await s.execute(sa.insert(UsageLimits), [{"organization_id": org} for org in orgs])
    for n, org in enumerate(orgs):
        body, headers = signed(
            stripe_event(
                "customer.subscription.created",
                subscription(org, n, start, cancel=False),
                start,
            )
        )
        await core.provider_webhooks.receive("stripe", headers, body, client_host="127.0.0.1")
    return orgs


async def measure(
    target: Target, requests: list[Any], admin: asyncpg.Connection | None
) -> tuple[float, float, float]:
    """(seconds, the server's CPU ms per request, its database backends')."""
    database = await backends_cpu(admin, target.application_name) if admin else {}
    cpu = cpu_seconds(target.pid)
    took = await drive(target.port, "/v1/webhooks/stripe", requests)
    cpu = cpu_seconds(target.pid) - cpu
    database_cpu = float("nan")
    if admin is not None:
        after = await backends_cpu(admin, target.application_name)
        database_cpu = sum(seconds - database.get(pid, 0.0) for pid, seconds in after.items())
    return took, cpu / len(requests) * 1000, database_cpu / len(requests) * 1000


async def main() -> None:
    tag = secrets.token_hex(4)
    names = {"saascore": f"bench-webhooks-in-{tag}", "bare": f"bench-webhooks-bare-{tag}"}
    admin: asyncpg.Connection | None = None
    if BACKEND == "sqlite":
        folder = tempfile.mkdtemp(prefix="bench-webhooks-in-")
        environment = {"DATABASE_URL": f"sqlite+aiosqlite:///{folder}/bench.db"}
    else:
        admin = await asyncpg.connect(URL)
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
        environment = {"DATABASE_URL": URL, "SAASCORE_DATABASE_SCHEMA": SCHEMA}
    environment |= {
        "SAASCORE_PAYMENT_PROVIDER": "stripe",
        "SAASCORE_STRIPE_SECRET_KEY": "sk_test_bench_" + "k" * 24,
        "SAASCORE_STRIPE_WEBHOOK_SECRET": SECRET,
        "SAASCORE_JWT_SECRET": secrets.token_urlsafe(32),
        "SAASCORE_LOG_LEVEL": "warning",
        "SAASCORE_AUTO_MIGRATE": "false",
        "SAASCORE_RATE_LIMIT_STORAGE": "memory://",
        # Delivering the outbox to tenants' endpoints is bench/webhooks.py's: not measured here.
        "SAASCORE_DISPATCH": "false",
        # A connection for every client, on both sides: waiting for the pool is not measured.
        "DB_POOL_SIZE": str(CONCURRENCY),
        "DB_MAX_OVERFLOW": "0",
    }
    start = int(time.time()) - 86_400
    settings = Settings(
        _env_file=None,
        database_url=environment["DATABASE_URL"],
        database_schema=environment.get("SAASCORE_DATABASE_SCHEMA"),
        payment_provider="stripe",
        stripe_secret_key=SecretStr(environment["SAASCORE_STRIPE_SECRET_KEY"]),
        stripe_webhook_secret=SecretStr(SECRET),
    )
    async with Saascore(settings) as core:
        await migrate.upgrade(core.database)
        await core.plans.load_catalog(read_catalog())
        async with core.database.engine.begin() as connection:
            await connection.run_sync(BARE.metadata.create_all)
        orgs = await seed(core, start)
    warm = deliveries(orgs, WARMUP, start, ORGS)
    measured = deliveries(orgs, REQUESTS, start, ORGS + 10 * WARMUP)
    ports = {"saascore": free_port(), "bare": free_port()}
    saascore = str(Path(sys.executable).with_name("saascore"))
    everywhere = {**os.environ, **environment}
    try:
        with (
            tempfile.TemporaryDirectory() as cwd,  # away from any .env of this checkout
            server(
                [saascore, "serve", "--port", str(ports["saascore"])],
                {**everywhere, "SAASCORE_SERVICE_NAME": names["saascore"]},
                cwd,
            ) as saascore_process,
            server(
                [sys.executable, SCRIPT, "--bare", str(ports["bare"])],
                {**everywhere, "SAASCORE_SERVICE_NAME": names["bare"]},
                cwd,
            ) as bare_process,
        ):
            await wait_until_up(saascore_process, f"http://127.0.0.1:{ports['saascore']}/health")
            await wait_until_up(bare_process, f"http://127.0.0.1:{ports['bare']}/ping")
            real = Target(ports["saascore"], saascore_process.pid, names["saascore"])
            bare = Target(ports["bare"], bare_process.pid, names["bare"])
            await drive(real.port, "/v1/webhooks/stripe", warm)
            await drive(bare.port, "/v1/webhooks/stripe", warm)
            took, cpu, database_cpu = await measure(real, measured, admin)
            reference, bare_cpu, bare_database_cpu = await measure(bare, measured, admin)
        async with Saascore(settings) as core, core.database.session(readonly=True) as s:
            stored = await s.scalar(sa.select(sa.func.count()).select_from(WebhookEvent))
            outcomes = (
                await s.execute(
                    sa.select(WebhookEvent.outcome, sa.func.count()).group_by(WebhookEvent.outcome)
                )
            ).all()
            canceling = await s.scalar(
                sa.select(sa.func.count())
                .select_from(Subscription)
                .where(
                    Subscription.provider == PaymentProvider.STRIPE,
                    Subscription.cancel_at_period_end,
                )
            )
            rows = await s.scalar(sa.select(sa.func.count()).select_from(BARE))
    finally:
        if admin is not None:
            await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            await admin.close()
    print(
        f"{BACKEND}, organisations: {ORGS}, requests: {REQUESTS} (20 % copies), "
        f"{CONCURRENCY} clients, load: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':26}{'req/s':>9}{'CPU ms/req: server':>20}{'database':>10}")
    print(f"(a) saascore intake:      {REQUESTS / took:9.1f}{cpu:20.2f}{database_cpu:10.2f}")
    print(
        f"(b) bare verify+insert:   {REQUESTS / reference:9.1f}{bare_cpu:20.2f}"
        f"{bare_database_cpu:10.2f}"
    )
    print(
        f"ratio (a)/(b): {reference / took:.3f}   (goal >= 0.5); CPU per request b/a: "
        f"server {bare_cpu / cpu:.2f}, server and database "
        f"{(bare_cpu + bare_database_cpu) / (cpu + database_cpu):.2f}"
    )
    print(
        f"stored events: {stored} { ({outcome.value: n for outcome, n in outcomes}) }, "
        f"bare rows: {rows}, subscriptions canceling at the period's end: {canceling}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        uvicorn.run(bare_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        asyncio.run(main())
