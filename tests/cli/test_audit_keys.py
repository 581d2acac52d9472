"""`saascore keys` and `saascore audit`, through the console script."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore.audit import AuditService, audited_bus
from saascore.identity import IdentityService, InvalidToken, Permission, PrincipalKind
from saascore.kit.db import Database
from saascore.models import ApiKey, AuditLog, OperatorKey, UserRole
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from saascore.tenancy.users import UserService
from tests.cli.runner import Cli


@dataclass(frozen=True)
class Setup:
    cli: Cli
    database: Database
    org_id: uuid.UUID
    other_org_id: uuid.UUID
    user_id: uuid.UUID

    def identity(self) -> IdentityService:
        audit = AuditService(self.database)
        orgs = OrganizationService(self.database, PlanService(self.database))
        return IdentityService(self.database, self.database.settings, orgs, audited_bus(audit))


@pytest_asyncio.fixture(loop_scope="session")
async def setup(migrated_cli: Cli, empty_database: Database) -> Setup:
    """The default catalog; organisation `acme` (on Pro, which has API access) with a member
    ada@example.com, and `globex` (on Free, which has none)."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    orgs = OrganizationService(empty_database, plans)
    acme = await orgs.create(name="Acme", external_id="acme", plan="pro")
    globex = await orgs.create(name="Globex", external_id="globex")
    users = UserService(empty_database, audited_bus(AuditService(empty_database)))
    ada = await users.create(acme.id, email="ada@example.com", role=UserRole.MEMBER)
    return Setup(migrated_cli, empty_database, acme.id, globex.id, ada.id)


async def key_counts(database: Database) -> tuple[int, int]:
    async with database.session(readonly=True) as s:
        tenant = await s.scalar(sa.select(sa.func.count()).select_from(ApiKey))
        operator = await s.scalar(sa.select(sa.func.count()).select_from(OperatorKey))
    return int(tenant or 0), int(operator or 0)


def table_row(stdout: str, first_cell: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [first_cell])


@pytest.mark.asyncio(loop_scope="session")
class TestKeys:
    async def test_an_operator_key_is_shown_once_and_works_until_revoked(
        self, setup: Setup
    ) -> None:
        created = setup.cli("keys", "create", "--operator", "--name", "staff", "--expires", "90d")
        raw = created.ok().stdout.strip()
        assert created.stdout == f"{raw}\n"  # the key alone, for scripts
        assert raw.startswith("sk_op_")
        assert "not shown again" in created.stderr
        principal = await setup.identity().authenticate(raw)
        assert principal.kind is PrincipalKind.OPERATOR

        listed = setup.cli("keys", "list", "--operator").ok()
        row = table_row(listed.stdout, str(principal.id))
        assert row[1:3] == ["staff", raw[: len("sk_op_") + 8]]
        assert raw not in listed.stdout

        revoked = setup.cli("keys", "revoke", str(principal.id), "--operator").ok()
        assert revoked.stdout.startswith(f"key {principal.id} (sk_op_")
        with pytest.raises(InvalidToken):
            await setup.identity().authenticate(raw)
        again = setup.cli("keys", "revoke", str(principal.id)).ok()  # found without --operator
        assert again.stdout == revoked.stdout
        assert str(principal.id) not in setup.cli("keys", "list", "--operator").stdout
        assert str(principal.id) in setup.cli("keys", "list", "--operator", "--all").stdout

    async def test_an_organisation_key_for_a_user(self, setup: Setup) -> None:
        created = setup.cli(
            "keys",
            "create",
            "--org",
            "acme",
            "--scopes",
            "usage:write, usage:read",
            "--name",
            "ingest",
            "--test",
            "--user",
            "Ada@Example.com",
        ).ok()
        raw = created.stdout.strip()
        assert raw.startswith("sk_test_")
        principal = await setup.identity().authenticate(raw)
        assert (principal.kind, principal.organization_id, principal.user_id) == (
            PrincipalKind.API_KEY,
            setup.org_id,
            setup.user_id,
        )
        assert principal.permissions == {Permission.USAGE_READ, Permission.USAGE_WRITE}

        listed, audit, as_json, ids, audit_json = setup.cli.run_together(
            ["keys", "list", "--org", str(setup.org_id)],
            ["audit", "list", "--org", "acme", "--action", "api_key.created"],
            ["keys", "list", "--org", "acme", "--json"],
            ["keys", "list", "--org", "acme", "--ids"],
            ["audit", "list", "--org", "acme", "--action", "api_key.created", "--json"],
        )
        [key] = json.loads(as_json.ok().stdout)
        assert key["id"] == str(principal.id)
        assert key["scopes"] == ["usage:read", "usage:write"]
        assert key["user_id"] == str(setup.user_id)
        assert key["revoked_at"] is None
        assert datetime.fromisoformat(key["created_at"]).tzinfo is not None
        assert ids.ok().stdout == f"{principal.id}\n"  # only the id, for xargs
        [logged] = json.loads(audit_json.ok().stdout)
        assert (logged["seq"], logged["action"], logged["actor_type"]) == (
            3,  # after organization.created and user.created
            "api_key.created",
            "cli",
        )
        row = table_row(listed.ok().stdout, str(principal.id))
        assert row[1:5] == [
            "ingest",
            raw[: len("sk_test_") + 8],
            "usage:read,usage:write",
            str(setup.user_id),
        ]
        entry = table_row(audit.ok().stdout, "3")  # organization.created, user.created, this
        assert entry[3:5] == ["api_key.created", "cli"]

        revoked = setup.cli("keys", "revoke", str(principal.id)).ok()  # its organisation found
        assert "revoked at" in revoked.stdout
        with pytest.raises(InvalidToken):
            await setup.identity().authenticate(raw)
        assert setup.cli("keys", "list", "--org", "acme").stderr == "no keys\n"

    async def test_ids_are_whole_in_a_narrow_terminal(self, setup: Setup) -> None:
        """At 60 columns the tables do not fit: ids never wrap nor shrink (nor does anything,
        as even the ids and the longest words are wider than that)."""
        name = "a rather long name for a key, longer than the terminal is wide"
        created = setup.cli(
            "keys", "create", "--org", "acme", "--name", name, "--user", "ada@example.com"
        ).ok()
        key_id = created.stderr.split()[2]
        narrow = setup.cli.with_env({"COLUMNS": "60"})
        keys, orgs, audit = narrow.run_together(
            ["keys", "list", "--org", "acme"],
            ["orgs", "list"],
            ["audit", "list", "--org", "acme", "--action", "api_key.created"],
        )
        for result, ids in (
            (keys, [key_id, str(setup.user_id), created.stdout.strip()[:16]]),
            (orgs, [str(setup.org_id), str(setup.other_org_id)]),
            (audit, [key_id]),
        ):
            words = {word for line in result.ok().stdout.splitlines() for word in line.split()}
            assert set(ids) <= words, result
            assert "…" not in result.stdout, result
        assert name in keys.stdout

    async def test_errors_are_one_line_and_write_nothing(self, setup: Setup) -> None:
        """Each a usage error or a refusal on one line; dates past the calendar's end too."""
        before = await key_counts(setup.database)
        missing = str(uuid.uuid4())
        results = setup.cli.run_together(
            ["keys", "create", "--name", "x"],
            ["keys", "create", "--name", "x", "--org", "acme", "--operator"],
            ["keys", "create", "--name", "x", "--operator", "--test"],
            ["keys", "create", "--name", "x", "--operator", "--expires", "soon"],
            ["keys", "create", "--name", "x", "--operator", "--expires", "2001-01-01"],
            ["keys", "create", "--name", "x", "--operator", "--expires", "9999-12-31T23:59-05:00"],
            ["keys", "create", "--name", "x", "--operator", "--expires", "99999999d"],
            ["keys", "create", "--name", "x", "--org", "nobody"],
            ["keys", "create", "--name", "x", "--org", "acme", "--scopes", "usage:root"],
            ["keys", "create", "--name", "x", "--org", "acme", "--user", "eve@example.com"],
            ["keys", "create", "--name", "  ", "--org", "acme"],
            ["keys", "create", "--name", "x", "--org", "globex"],
            ["keys", "list"],
            ["keys", "revoke", "not-a-key"],
            ["keys", "revoke", missing],
            ["keys", "revoke", missing, "--org", "acme"],
        )
        lines = [(result.returncode, result.error_line()) for result in results]
        assert lines == [
            (2, "saascore: name the key's owner: --org ID or --operator"),
            (2, "saascore: --org and --operator exclude each other"),
            (2, "saascore: --test and --user are for organisation keys"),
            (2, f"saascore: --expires 'soon': {NOT_AN_EXPIRY}"),
            (2, "saascore: --expires is in the past"),  # invalid by itself: names the option
            (2, f"saascore: --expires '9999-12-31T23:59-05:00': {NOT_AN_EXPIRY}"),
            (2, f"saascore: --expires '99999999d': {NOT_AN_EXPIRY}"),
            (1, "saascore: no organisation nobody"),
            (
                2,
                "saascore: unknown scope 'usage:root'; known: usage:read, usage:write, "
                "billing:read, billing:write, credits:write, workspace:read, workspace:write, "
                "admin",
            ),
            (1, "saascore: no user eve@example.com in this organisation"),
            (2, "saascore: --name: a key needs a name of 1 to 255 characters"),
            (1, "saascore: the Free plan does not include API access"),
            (2, "saascore: name the key's owner: --org ID or --operator"),
            (2, "saascore: 'not-a-key' is not a key id (a UUID, as 'saascore keys list' shows)"),
            (1, f"saascore: no key {missing}"),
            (1, f"saascore: no API key {missing}"),
        ]
        assert await key_counts(setup.database) == before


NOT_AN_EXPIRY = "give a date or time from 1970 to 9998, or a duration such as 90d"


@pytest.mark.asyncio(loop_scope="session")
class TestAuditVerify:
    async def test_intact_then_tampered(self, setup: Setup) -> None:
        setup.cli("keys", "create", "--org", "acme", "--name", "k").ok()
        async with setup.database.session(readonly=True) as s:
            chains = await s.scalar(sa.select(sa.func.count(sa.distinct(AuditLog.organization_id))))
            entries = await s.scalar(sa.select(sa.func.count()).select_from(AuditLog))
        assert chains
        assert entries
        intact = setup.cli("audit", "verify").ok()
        assert re.fullmatch(r"(\d+) chains? intact, (\d+) entr(y|ies) verified\n", intact.stdout)
        assert intact.stdout.split()[0] == str(chains)
        assert intact.stdout.split()[3] == str(entries)

        async with setup.database.transaction() as s:
            await s.execute(
                sa.update(AuditLog)
                .where(AuditLog.organization_id == setup.org_id, AuditLog.seq == 1)
                .values(action="user.nothing_happened")
            )
        everything, acme, globex, nobody = setup.cli.run_together(
            ["audit", "verify"],
            ["audit", "verify", "--org", "acme"],
            ["audit", "verify", "--org", str(setup.other_org_id)],
            ["audit", "verify", "--org", "nobody"],
        )
        assert everything.returncode == 1, everything
        assert everything.stdout == ""
        assert everything.stderr.splitlines() == [
            f"organisation {setup.org_id}: entry 1: content does not match its hash",
            f"1 of {chains} chain{'s' if chains != 1 else ''} broken",
        ]
        assert acme.returncode == 1, acme
        assert acme.stderr.splitlines() == [
            f"organisation {setup.org_id}: entry 1: content does not match its hash",
            "1 of 1 chain broken",
        ]
        assert globex.ok().stdout.endswith(" verified\n")  # another organisation's chain
        assert nobody.error_line(1) == "saascore: no organisation nobody"


def test_help_lists_the_commands(cli: Cli) -> None:
    text = " ".join(cli("--help").ok().stdout.replace("│", " ").split())
    assert "keys API keys of organisations and operators: create, list, revoke." in text
    assert "audit The audit log: verify, list." in text
