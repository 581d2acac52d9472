"""The AI workspace, each part beside its reference in the same run.

Part "documents": document registrations per second at concurrency BENCH_WORKERS (default
32) against a storage limit, on BENCH_DOC_ORGS organisations (default 32; workers take them
in turn), BENCH_DOCS registrations in all (default 4,000, 1,000 bytes each; the limit lets
95 % of them in, so the last ones are refused). It was 4 organisations: then the few rows
each organisation's registrations queue on (its storage gauge, its audit chain head) were the
whole story, 8 workers waiting on each, and registrations hit statement timeouts; with 32,
what is measured is the work of one registration.

  (a) `DocumentService.register`: the conditional gauge update, the document row, its
      `document.created` event with its audit entry and outbox row. Registrations that
      arrive together share a transaction (group commit: `workspace.postgres`), each
      answered once its batch has committed;
  (b) the reference, bare SQL doing the same conditional gauge update and insert in one
      statement (`WITH g AS (UPDATE usage_limits ... RETURNING) INSERT INTO documents
      SELECT ... FROM g`), one transaction each, on other organisations with the same limit,
      through a SQLAlchemy session (BEGIN, the statement, COMMIT);
  (c) on PostgreSQL, the same statement on the driver's own connection in autocommit: one
      round trip, as the service's registration makes on PostgreSQL. The leaner of the two
      references is the one the goal is judged against.

Printed: the rates, the ratios (a)/(b) and (a)/(c) (goal >= 0.6 of the faster reference),
that each gauge equals its documents, and that (a)'s audit chains are intact with an entry and an
outbox row per registration. Run a part by name (`python bench/workspace.py
documents`); no name runs all.

BENCH_DATABASE=postgresql (default; SAASCORE_TEST_POSTGRES_URL picks the server, default
postgresql://postgres@127.0.0.1:5432/test) or sqlite (a file in a temporary directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import asyncpg
import sqlalchemy as sa

from saascore import Saascore, Settings
from saascore.kit.ids import new_id
from saascore.metering.errors import LimitExceeded
from saascore.migrations import migrate
from saascore.models import AuditLog, Document, OutboxEvent, UsageLimits
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKEND = os.environ.get("BENCH_DATABASE", "postgresql")
WORKERS = int(os.environ.get("BENCH_WORKERS", "32"))
DOCS = int(os.environ.get("BENCH_DOCS", "4000"))
ORGS = int(os.environ.get("BENCH_DOC_ORGS", "32"))
SIZE = 1_000
SCHEMA = "bench_workspace"

BARE_REGISTER = """
WITH g AS (
  UPDATE usage_limits SET storage_used_bytes = storage_used_bytes + :size
  WHERE organization_id = :org AND storage_used_bytes <= :cap - :size
  RETURNING organization_id
)
INSERT INTO documents (organization_id, id, filename, size_bytes, file_hash, status,
                       metadata, created_at, updated_at)
SELECT organization_id, :id, :filename, :size, :hash, 'uploaded', '{}', :now, :now FROM g
RETURNING id
"""
#: `BARE_REGISTER` for the driver: $1 org, $2 size, $3 cap, $4 id, $5 filename, $6 hash, $7 now.
DRIVER_REGISTER = (
    BARE_REGISTER.replace(":org", "$1::uuid")
    .replace(":size", "$2::bigint")
    .replace(":cap", "$3::bigint")
    .replace(":id", "$4::uuid")
    .replace(":filename", "$5")
    .replace(":hash", "$6")
    .replace(":now", "$7::timestamptz")
)


async def settings_for_backend() -> Settings:
    if BACKEND == "sqlite":
        folder = tempfile.mkdtemp(prefix="bench-workspace-")
        return Settings(database_url=f"sqlite+aiosqlite:///{folder}/bench.db")
    admin = await asyncpg.connect(URL)
    await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await admin.close()
    url = URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    return Settings(
        database_url=url, database_schema=SCHEMA, db_pool_size=WORKERS, db_max_overflow=WORKERS
    )


async def race(count: int, work: Callable[[int], Awaitable[bool]]) -> tuple[float, int]:
    """`count` calls of `work` by WORKERS workers; (seconds, how many were accepted)."""
    queue = iter(range(count))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        for n in queue:
            ok = await work(n)  # (not `accepted += await ...`: that reads before it waits)
            accepted += ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return time.perf_counter() - started, accepted


def digest(label: str, n: int) -> str:
    return hashlib.sha256(f"{label}-{n}".encode()).hexdigest()


async def documents_part(core: Saascore) -> list[str]:
    """Part "documents": registrations against a storage limit, beside bare SQL."""
    per_org = DOCS // ORGS
    cap = per_org * SIZE * 95 // 100
    service_orgs = [(await core.orgs.create(name=f"svc {n}", plan="pro")).id for n in range(ORGS)]
    bare_orgs = [(await core.orgs.create(name=f"bare {n}", plan="pro")).id for n in range(ORGS)]
    driver_orgs = []
    if BACKEND == "postgresql":
        driver_orgs = [
            (await core.orgs.create(name=f"driver {n}", plan="pro")).id for n in range(ORGS)
        ]
    for org_id in service_orgs + bare_orgs + driver_orgs:
        await core.usage.set_limit(org_id, "storage_bytes", cap)
    statement = sa.text(BARE_REGISTER).bindparams(
        sa.bindparam("org", type_=UsageLimits.__table__.c.organization_id.type),
        sa.bindparam("id", type_=Document.__table__.c.id.type),
        sa.bindparam("now", type_=Document.__table__.c.created_at.type),
        sa.bindparam("size", type_=sa.BigInteger()),
        sa.bindparam("cap", type_=sa.BigInteger()),
    )

    async def bare(n: int) -> bool:
        async with core.database.transaction() as s:
            inserted = await s.scalar(
                statement,
                {
                    "org": bare_orgs[n % ORGS],
                    "id": new_id(),
                    "size": SIZE,
                    "cap": cap,
                    "filename": f"doc-{n}.pdf",
                    "hash": digest("bare", n),
                    "now": core.usage.clock(),
                },
            )
        return inserted is not None

    async def service(n: int) -> bool:
        try:
            await core.documents.register(
                service_orgs[n % ORGS],
                filename=f"doc-{n}.pdf",
                size_bytes=SIZE,
                file_hash=digest("svc", n),
            )
        except LimitExceeded:
            return False
        return True

    async def driver(n: int) -> bool:
        async with core.database.driver() as connection:
            inserted = await connection.fetchval(
                DRIVER_REGISTER,
                driver_orgs[n % ORGS],
                SIZE,
                cap,
                new_id(),
                f"doc-{n}.pdf",
                digest("driver", n),
                core.usage.clock(),
            )
        return inserted is not None

    bare_took, bare_accepted = await race(DOCS, bare)
    took, accepted = await race(DOCS, service)
    lines = [
        f"documents: {BACKEND}, {DOCS} registrations of {SIZE} bytes, {WORKERS} workers, "
        f"{ORGS} organisations, limit {cap} bytes each",
        f"(a) DocumentService.register: {took:7.2f} s {DOCS / took:8.1f} /s  accepted {accepted}",
        f"(b) bare SQL, in a session:   {bare_took:7.2f} s {DOCS / bare_took:8.1f} /s"
        f"  accepted {bare_accepted}",
    ]
    fastest = bare_took
    if BACKEND == "postgresql":
        driver_took, driver_accepted = await race(DOCS, driver)
        fastest = min(fastest, driver_took)
        lines.append(
            f"(c) bare SQL, driver, autocommit: {driver_took:7.2f} s "
            f"{DOCS / driver_took:8.1f} /s  accepted {driver_accepted}"
        )
        lines.append(f"ratio (a)/(c): {driver_took / took:.3f}")
    lines.append(f"ratio (a)/(b): {bare_took / took:.3f}")
    lines.append(f"ratio (a)/(faster reference): {fastest / took:.3f}   (goal >= 0.6)")
    everyone = service_orgs + bare_orgs + driver_orgs
    gauges = [await core.documents.storage_used(org_id) for org_id in everyone]
    consistent = all(recorded == actual for recorded, actual in gauges)
    lines.append(f"gauges equal the documents: {consistent}")
    intact = all([await core.audit.verify(org_id) == [] for org_id in service_orgs])
    async with core.database.session(readonly=True) as s:
        entries = await s.scalar(
            sa.select(sa.func.count()).where(
                AuditLog.organization_id.in_(service_orgs), AuditLog.action == "document.created"
            )
        )
        outbox = await s.scalar(
            sa.select(sa.func.count()).where(
                OutboxEvent.organization_id.in_(service_orgs),
                OutboxEvent.type == "document.created",
            )
        )
    lines.append(
        f"(a)'s audit chains intact: {intact}; entries {entries}, outbox rows {outbox}"
        f" for {accepted} registrations"
    )
    return lines


PARTS: dict[str, Callable[[Saascore], Awaitable[list[str]]]] = {"documents": documents_part}


async def main(names: list[str]) -> None:
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    settings = await settings_for_backend()
    async with Saascore(settings) as core:
        await migrate.upgrade(core.database)
        await core.plans.load_catalog(read_catalog())
        print(f"load: {os.getloadavg()[0]:.2f}")
        for name in names or list(PARTS):
            for line in await PARTS[name](core):
                print(line)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
