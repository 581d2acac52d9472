"""`saascore webhooks list` and `replay`, through the console script: stored provider events
listed and filtered, a replay that changes nothing the first delivery applied; and `saascore
packs create` with the pack's provider ids."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore import Saascore
from saascore.kit.db import Database
from saascore.models import Payment, Subscription
from saascore.plans import read_catalog
from tests.cli.runner import Cli
from tests.providers.helpers import mock_price, payment_event, subscription_event, unique

#: Once, on PostgreSQL: the intake beneath is tested on both databases (tests/providers).
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


async def _counts(database: Database) -> tuple[int, int]:
    async with database.session(readonly=True) as s:
        subscriptions = await s.scalar(sa.select(sa.func.count()).select_from(Subscription))
        payments = await s.scalar(sa.select(sa.func.count()).select_from(Payment))
    return int(subscriptions or 0), int(payments or 0)


@pytest_asyncio.fixture(loop_scope="session")
async def delivered(migrated_cli: Cli, empty_database: Database) -> Cli:
    """Two mock events delivered: a subscription and its payment."""
    async with Saascore(empty_database.settings, database=empty_database) as core:
        await core.plans.load_catalog(read_catalog())
        org = await core.orgs.create(name="Acme", plan="free", external_id="acme")
        customer, subscription = unique("mock_cus"), unique("mock_sub")
        price = await mock_price(empty_database, "pro")
        for body in (
            subscription_event(
                unique("mock_evt"),
                minute=1,
                subscription=subscription,
                customer=customer,
                price=price,
                org=org.id,
            ),
            payment_event(
                unique("mock_evt"),
                minute=2,
                subscription=subscription,
                customer=customer,
                payment=unique("mock_pay"),
                amount=2999,
            ),
        ):
            receipt = await core.provider_webhooks.receive(
                "mock", {}, json.dumps(body).encode(), client_host="127.0.0.1"
            )
            assert receipt.outcome.value == "processed"
    return migrated_cli


async def test_list_and_replay(delivered: Cli, empty_database: Database) -> None:
    cli = delivered
    listed = json.loads(cli("webhooks", "list", "--json").ok().stdout)
    assert [(e["event_type"], e["outcome"]) for e in listed] == [
        ("payment_succeeded", "processed"),
        ("subscription_updated", "processed"),
    ]
    assert cli("webhooks", "list", "--provider", "stripe", "--ids").ok().stdout.strip() == ""
    assert len(cli("webhooks", "list", "--outcome", "processed", "--ids").ok().stdout.split()) == 2
    before = await _counts(empty_database)
    assert before == (1, 1)
    for event in listed:
        replayed = cli("webhooks", "replay", event["id"]).ok()
        assert replayed.stdout.strip() == f"event {event['id']}: processed"
    assert await _counts(empty_database) == before
    again = json.loads(cli("webhooks", "list", "--json").ok().stdout)
    assert [e["attempts"] for e in again] == [2, 2]


def test_refusals(delivered: Cli) -> None:
    cli = delivered
    missing = cli("webhooks", "replay", "01900000-0000-7000-8000-000000000000")
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1
    assert cli("webhooks", "replay", "nope").returncode == 2
    assert cli("webhooks", "list", "--provider", "paypal").returncode == 2


def test_packs_create_with_provider_ids(delivered: Cli) -> None:
    cli = delivered
    cli(
        "packs",
        "create",
        "credits-1k",
        "--credits",
        "1000",
        "--price",
        "9.99",
        "--stripe-price",
        "price_123",
        "--lemonsqueezy-variant",
        "456",
    ).ok()
    [pack] = json.loads(cli("packs", "list", "--json").ok().stdout)
    assert (pack["stripe_price_id"], pack["lemon_squeezy_variant_id"]) == ("price_123", "456")
    taken = cli(
        "packs", "create", "other", "--credits", "1", "--price", "1", "--stripe-price", "price_123"
    )
    assert taken.returncode == 1
