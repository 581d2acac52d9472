"""Control characters in the names and notes people choose (`Label`, `Note`, `checked_text`):
refused with 422 `invalid_character` over HTTP and `InvalidCharacter` from the library, at
every field that takes one, on both databases, and nothing is written. An ESC stored in an
organisation's name would reach an operator's terminal as an escape sequence."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore import Saascore
from saascore.kit.db import Database
from saascore.kit.errors import InvalidCharacter, InvalidInput
from saascore.kit.validation import (
    Label,
    Note,
    checked_name,
    checked_text,
    control_character,
    format_character,
)
from saascore.models import (
    ApiKey,
    CreditGrant,
    Organization,
    SubscriptionPlan,
    User,
    WebhookEndpoint,
)
from saascore.plans import read_catalog
from saascore.plans.catalog import Catalog
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import create_organization

ASYNC = pytest.mark.asyncio(loop_scope="session")

#: What the newcomer sent: SOH and ESC in an organisation's name.
EVIL = "a\u0001\u001bb"
#: Control characters of each kind: C0 (ESC, BEL, CR, LF, TAB, US), DEL and C1 (CSI, NEL).
CONTROLS = ("\x1b", "\x07", "\r", "\n", "\t", "\x1f", "\x7f", "\x9b", "\x85")


class TestTheTypes:
    @pytest.mark.parametrize("character", CONTROLS)
    def test_a_label_takes_no_control_character(self, character: str) -> None:
        assert control_character(f"x{character}y") == character
        with pytest.raises(InvalidCharacter) as info:
            checked_text(f"x{character}y", field="name")
        assert (info.value.code, info.value.status_code, info.value.details) == (
            "invalid_character",
            422,
            {"field": "name"},
        )
        assert isinstance(info.value, InvalidInput)
        with pytest.raises(ValidationError) as refused:
            TypeAdapter(Label).validate_python(f"x{character}y")
        assert refused.value.errors()[0]["type"] == "invalid_character"

    @pytest.mark.parametrize(
        "character", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e"]
    )
    def test_a_name_takes_no_invisible_format_character(self, character: str) -> None:
        assert format_character(f"{character}Top") == character
        with pytest.raises(InvalidCharacter) as info:
            checked_name(f"{character}Top", field="name")
        assert (info.value.code, info.value.details) == ("invalid_character", {"field": "name"})
        assert f"U+{ord(character):04X}" in info.value.message

    def test_a_name_takes_letters_of_any_script(self) -> None:
        for name in ("Top", "Caf\u00e9", "\u0645\u0644\u0641\u0627\u062a", "\u6587\u4ef6"):
            assert format_character(name) is None
            assert checked_name(name, field="name") == name
        with pytest.raises(InvalidCharacter):
            checked_name("a\x1bb", field="name")

    @pytest.mark.parametrize("character", ["\n", "\t"])
    def test_a_note_takes_line_feeds_and_tabs(self, character: str) -> None:
        text = f"first{character}second"
        assert checked_text(text, field="description", multiline=True) == text
        assert TypeAdapter(Note).validate_python(text) == text

    @pytest.mark.parametrize("character", ["\x1b", "\r", "\x00", "\x9b"])
    def test_a_note_takes_no_other_control_character(self, character: str) -> None:
        with pytest.raises(InvalidCharacter):
            checked_text(f"x{character}y", field="description", multiline=True)
        with pytest.raises(ValidationError):
            TypeAdapter(Note).validate_python(f"x{character}y")

    @pytest.mark.parametrize("text", ["Acme", "Ünïcødé — ok", "日本語", "emoji 🚀", "a b"])
    def test_printable_text_passes(self, text: str) -> None:
        assert control_character(text) is None
        assert checked_text(text, field="name") == text
        assert TypeAdapter(Label).validate_python(text) == text

    def test_a_catalog_refuses_a_plan_name_with_a_control_character(self) -> None:
        document = read_catalog().model_dump(mode="json")
        document["plans"]["free"]["name"] = "Free\x1b[2J"
        with pytest.raises(ValidationError) as info:
            Catalog.model_validate(document)
        assert info.value.errors()[0]["type"] == "invalid_character"
        document["plans"]["free"]["name"] = "Free"
        document["plans"]["free"]["description"] = "Line one.\nLine two."
        assert Catalog.model_validate(document).plans["free"].description == "Line one.\nLine two."


@ASYNC
class TestTheLibrary:
    """The services refuse what the schemas refuse, so the library and the CLI are covered."""

    async def test_every_name_and_note(self, database: Database, session: AsyncSession) -> None:
        core = Saascore(database.settings, database=database)
        await core.plans.load_catalog(read_catalog(), session=session)
        org = await core.orgs.create(name="Clean", plan="pro", session=session)
        user = await core.users.create(org.id, email="u@example.com", session=session)
        calls: list[tuple[str, Any]] = [
            ("name", core.orgs.create(name=EVIL, session=session)),
            ("name", core.orgs.update(org.id, name=EVIL, session=session)),
            ("reason", core.orgs.suspend(org.id, reason="late\x1b[8m", session=session)),
            ("name", core.users.create(org.id, email="v@example.com", name=EVIL, session=session)),
            ("name", core.users.update(org.id, user.id, name=EVIL, session=session)),
            ("name", core.api_keys.create(org.id, name=EVIL, scopes=[], session=session)),
            ("name", core.api_keys.create_operator_key(name=EVIL, session=session)),
            (
                "description",
                core.webhooks.create(
                    org.id, url="https://hooks.example.com/x", description=EVIL, session=session
                ),
            ),
            ("description", core.credits.grant(org.id, 5, description=EVIL, session=session)),
            ("reason", core.credits.adjust(org.id, 5, reason=EVIL, session=session)),
            ("name", core.plans.update("pro", {"name": EVIL}, session=session)),
        ]
        for field, call in calls:
            with pytest.raises(InvalidCharacter) as info:
                await call
            assert info.value.details["field"].endswith(field), (field, info.value)
        assert await escapes_stored(session) == 0
        assert (await core.orgs.get(org.id, session=session)).status.value == "active"

    async def test_half_a_surrogate_pair(self, database: Database, session: AsyncSession) -> None:
        # What Python makes of bytes that are not UTF-8 on a command line: `saascore credits
        # grant ... --description` with them was an unexpected error on SQLite and a database
        # error on PostgreSQL.
        core = Saascore(database.settings, database=database)
        await core.plans.load_catalog(read_catalog(), session=session)
        org = await core.orgs.create(name="Clean", plan="pro", session=session)
        half = "caf\udce9"
        balance = await core.credits.balance(org.id, session=session)
        calls: list[tuple[str, Any]] = [
            ("name", core.orgs.create(name=half, session=session)),
            ("name", core.api_keys.create(org.id, name=half, scopes=[], session=session)),
            ("description", core.credits.grant(org.id, 5, description=half, session=session)),
            (
                "idempotency_key",
                core.credits.grant(org.id, 5, idempotency_key=half, session=session),
            ),
            ("reason", core.credits.adjust(org.id, 5, reason=half, session=session)),
        ]
        for field, call in calls:
            with pytest.raises(InvalidCharacter) as info:
                await call
            assert info.value.details["field"].endswith(field), (field, info.value)
        assert await core.credits.balance(org.id, session=session) == balance

    async def test_a_multi_line_plan_description_is_kept(
        self, database: Database, session: AsyncSession
    ) -> None:
        core = Saascore(database.settings, database=database)
        await core.plans.load_catalog(read_catalog(), session=session)
        plan = await core.plans.update(
            "pro", {"description": "For teams.\n\tAnd more."}, session=session
        )
        assert plan.description == "For teams.\n\tAnd more."


async def escapes_stored(session: AsyncSession) -> int:
    """How many stored names and notes hold an ESC."""
    total = 0
    for column in (
        Organization.name,
        User.full_name,
        ApiKey.name,
        WebhookEndpoint.description,
        CreditGrant.description,
        SubscriptionPlan.name,
    ):
        total += (
            await session.scalar(sa.select(sa.func.count()).where(column.contains("\x1b"))) or 0
        )
    return total


async def refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_character", error
    assert error["details"]["errors"][0]["location"].endswith(field), error


@ASYNC
class TestHttp:
    async def test_the_reported_organisation_name(self, admin: Admin) -> None:
        response = await admin.client.post(
            "/v1/admin/organizations", json={"name": EVIL}, headers=admin.operator
        )
        await refused(response, "name")
        async with admin.database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(Organization.name.contains("\x1b"))
            )
        assert count == 0

    async def test_every_field_a_tenant_names(self, admin: Admin, customer: TestTenant) -> None:
        client, headers = admin.client, customer.headers
        org_path = f"/v1/admin/organizations/{customer.organization_id}"
        for method, path, body, field, as_operator in [
            ("PATCH", "/v1/organization", {"name": EVIL}, "name", False),
            ("POST", "/v1/users", {"email": "c@example.com", "name": EVIL}, "name", False),
            ("PATCH", f"/v1/users/{customer.user_id}", {"name": EVIL}, "name", False),
            ("POST", "/v1/api-keys", {"name": EVIL}, "name", False),
            (
                "POST",
                "/v1/webhook-endpoints",
                {"url": "https://hooks.example.com/x", "description": EVIL},
                "description",
                False,
            ),
            (
                "POST",
                "/v1/credits/consume",
                {"amount": 1, "idempotency_key": "c", "description": EVIL},
                "description",
                False,
            ),
            (
                "POST",
                f"{org_path}/credits/grants",
                {"amount": 5, "idempotency_key": "k", "description": EVIL},
                "description",
                True,
            ),
            ("POST", f"{org_path}/suspend", {"reason": EVIL}, "reason", True),
            ("PATCH", "/v1/admin/plans/free", {"name": EVIL}, "name", True),
            (
                "POST",
                "/v1/auth/register",
                {
                    "email": f"{uuid.uuid4().hex}@example.com",
                    "password": "a long enough password",
                    "organization_name": EVIL,
                },
                "organization_name",
                False,
            ),
        ]:
            response = await client.request(
                method, path, json=body, headers=admin.operator if as_operator else headers
            )
            await refused(response, field)
        body = (await client.get("/v1/organization", headers=headers)).json()
        assert "\x1b" not in body["name"]
        async with admin.database.session(readonly=True) as s:
            assert await escapes_stored(s) == 0

    async def test_a_validation_error_beside_it_keeps_its_code(self, admin: Admin) -> None:
        response = await admin.client.post(
            "/v1/admin/organizations", json={"name": EVIL, "plan": 5}, headers=admin.operator
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"


@ASYNC
async def test_text_stored_before_the_check_still_reads(session: AsyncSession) -> None:
    """Rows written before the check (or behind saascore's back) still load: the check is on
    what comes in, not on what is read."""
    org = await create_organization(session, name="old\x1b[31mname")
    assert (await session.get(Organization, org.id)) is not None
