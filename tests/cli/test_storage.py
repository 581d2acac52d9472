"""`saascore storage verify`: a drifted gauge is reported (exit 1), `--fix` repairs it with
an audit entry, and then it is consistent."""

from __future__ import annotations

import hashlib
import json

import pytest_asyncio
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import AuditLog, UsageLimits
from saascore.plans.catalog import read_catalog
from saascore.plans.service import PlanService
from saascore.tenancy.service import OrganizationService
from saascore.workspace.documents import DocumentService
from tests.cli.runner import Cli


@pytest_asyncio.fixture(loop_scope="session")
async def drifted(migrated_cli: Cli, empty_database: Database) -> tuple[Cli, str]:
    """Organisation `acme` with a 4 000-byte document and a gauge that says 10."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    org = await OrganizationService(empty_database, plans).create(name="Acme", plan="pro")
    await DocumentService(empty_database).register(
        org.id, filename="a.pdf", size_bytes=4_000, file_hash=hashlib.sha256(b"a").hexdigest()
    )
    async with empty_database.transaction() as session:
        await session.execute(
            sa.update(UsageLimits)
            .where(UsageLimits.organization_id == org.id)
            .values(storage_used_bytes=10)
        )
    return migrated_cli, str(org.id)


async def test_verify_reports_then_fix_repairs(
    drifted: tuple[Cli, str], empty_database: Database
) -> None:
    cli, org = drifted
    found = cli("storage", "verify")
    assert found.returncode == 1, str(found)
    assert found.stderr.splitlines() == [
        f"organisation {org}: differs: gauge 10 bytes, documents 4000 bytes",
        "1 difference found",
    ]
    as_json = cli("storage", "verify", "--json")
    assert as_json.returncode == 1, str(as_json)
    assert json.loads(as_json.stdout) == [
        {"organization_id": org, "recorded_bytes": 10, "actual_bytes": 4000, "repaired": False}
    ]
    fixed = cli("storage", "verify", "--fix").ok()
    assert fixed.stdout.strip() == (
        f"organisation {org}: repaired: gauge 10 bytes, documents 4000 bytes"
    )
    assert cli("storage", "verify").ok().stdout.strip() == "storage consistent"
    async with empty_database.session(readonly=True) as session:
        entry = (
            await session.scalars(sa.select(AuditLog).where(AuditLog.action == "storage.repaired"))
        ).one()
    assert str(entry.organization_id) == org
    assert (entry.details["from"], entry.details["to"]) == (10, 4000)
