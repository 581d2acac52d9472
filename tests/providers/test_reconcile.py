"""Reconciliation against the fake Stripe and the fake Lemon Squeezy: each difference found
(missing on either side, status, plan, period end, cancellation at the period's end), fixed
through the webhook intake's apply path with audit entries naming reconciliation, and a second
run that finds nothing. The CLI prints the same, and fails on one line when the provider is
not configured or cannot be reached.

The scratch database is shared by the module's tests, so each asserts about the subscriptions
it made (a test's fake provider does not know another test's)."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from pydantic import SecretStr

from saascore import Saascore
from saascore.config import PaymentProviderChoice, Settings
from saascore.kit.db import Database
from saascore.models import Organization, PlanPrice, SubscriptionPlan, SubscriptionStatus
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider
from saascore.providers.errors import ProviderNotConfigured, ProviderUnavailable, UnknownProvider
from saascore.providers.reconcile import Difference, DifferenceKind
from tests.cli.runner import Cli, clean_environment, free_port
from tests.helpers import settings_env
from tests.providers import fake_lemonsqueezy as fakes
from tests.providers.fake_lemonsqueezy import FakeLemonSqueezy
from tests.providers.fake_lemonsqueezy import subscription_object as ls_subscription
from tests.providers.fake_stripe import FakeStripe, fake_stripe_server, signed  # noqa: F401
from tests.providers.fake_stripe import event as stripe_event
from tests.providers.helpers import subscriptions_of, unique

fake_lemonsqueezy = fakes.fake_lemonsqueezy

#: The catalog's prices at the fakes (set once per scratch database).
STRIPE_PRICES = {("pro", "monthly"): "price_rec_pro_m", ("business", "monthly"): "price_rec_biz_m"}
LS_VARIANTS = {("pro", "monthly"): "990001", ("business", "monthly"): "990002"}


async def sell_through_providers(database: Database) -> None:
    async with database.transaction() as s:
        for (plan, cycle), price_id in STRIPE_PRICES.items():
            variant = LS_VARIANTS[(plan, cycle)]
            plan_id = sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == plan)
            await s.execute(
                sa.update(PlanPrice)
                .where(
                    PlanPrice.plan_id == plan_id.scalar_subquery(),
                    PlanPrice.billing_cycle == BillingCycle(cycle),
                    PlanPrice.currency == "USD",
                )
                .values(stripe_price_id=price_id, lemon_squeezy_variant_id=variant)
            )


def configured(settings: Settings, values: dict[str, Any]) -> Settings:
    """`settings` selling through a fake provider (`model_copy` does not validate, so the
    secrets are made `SecretStr` here)."""
    secret = {"stripe_secret_key", "stripe_webhook_secret", "lemonsqueezy_api_key"}
    secret.add("lemonsqueezy_signing_secret")
    return settings.model_copy(
        update={k: SecretStr(v) if k in secret else v for k, v in values.items()}
    )


def stripe_values(fake: FakeStripe) -> dict[str, Any]:
    return {
        "payment_provider": PaymentProviderChoice.STRIPE,
        "stripe_secret_key": fake.api_key,
        "stripe_webhook_secret": fake.webhook_secret,
        "stripe_api_base": fake.url,
    }


@pytest_asyncio.fixture(loop_scope="session")
async def stripe_core(scratch: Database, fake_stripe: FakeStripe) -> AsyncIterator[Saascore]:
    await sell_through_providers(scratch)
    settings = configured(scratch.settings, stripe_values(fake_stripe))
    core = Saascore(settings, database=scratch)
    try:
        yield core
    finally:
        await core.close()


@pytest_asyncio.fixture(loop_scope="session")
async def ls_core(
    scratch: Database, fake_lemonsqueezy: FakeLemonSqueezy
) -> AsyncIterator[Saascore]:
    await sell_through_providers(scratch)
    settings = configured(scratch.settings, fake_lemonsqueezy.settings_values())
    core = Saascore(settings, database=scratch)
    try:
        yield core
    finally:
        await core.close()


def mine(differences: Iterable[Difference], *ids: str) -> set[tuple[str, DifferenceKind]]:
    return {(d.subscription_id, d.kind) for d in differences if d.subscription_id in ids}


async def reconciled_entries(core: Saascore, org_id: uuid.UUID) -> list[str]:
    return [
        entry.action
        for entry in await core.audit.list(org_id, limit=200)
        if entry.actor_type == "reconciliation"
    ]


async def plan_of(database: Database, org_id: uuid.UUID) -> str:
    async with database.session(readonly=True) as s:
        code = await s.scalar(
            sa.select(SubscriptionPlan.code)
            .join(Organization, Organization.plan_id == SubscriptionPlan.id)
            .where(Organization.id == org_id)
        )
    assert code is not None
    return code


class TestStripe:
    async def test_differences_found_fixed_and_gone(
        self, stripe_core: Saascore, fake_stripe: FakeStripe
    ) -> None:
        core = stripe_core
        org = await core.orgs.create(name="Acme")
        customer = unique("cus")
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
        sub = fake_stripe.state.add_subscription(
            customer=customer,
            price=STRIPE_PRICES[("pro", "monthly")],
            organization_id=org.id,
            period_start=start,
        )
        # The provider has it; saascore never heard (the webhook was lost).
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == {
            (sub["id"], DifferenceKind.MISSING_IN_SAASCORE)
        }
        _, fixes = await core.reconciler.fix(PaymentProvider.STRIPE)
        [fix] = [f for f in fixes if f.subscription_id == sub["id"]]
        assert (fix.outcome, fix.organization_id) == ("processed", org.id)
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.status is SubscriptionStatus.ACTIVE
        assert ours.provider_subscription_id == sub["id"]
        assert await plan_of(core.database, org.id) == "pro"
        assert "subscription.created" in await reconciled_entries(core, org.id)
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == set()

        # At the provider: past due, moved to business, canceling at the period's end, and
        # a new period.
        item = sub["items"]["data"][0]
        item["price"] = {**item["price"], "id": STRIPE_PRICES[("business", "monthly")]}
        item["current_period_end"] += 86_400
        sub.update(status="past_due", cancel_at_period_end=True)
        found = await core.reconciler.compare("stripe")
        assert mine(found, sub["id"]) == {
            (sub["id"], DifferenceKind.STATUS),
            (sub["id"], DifferenceKind.PLAN),
            (sub["id"], DifferenceKind.PERIOD_END),
            (sub["id"], DifferenceKind.CANCEL_AT_PERIOD_END),
        }
        [plan] = [
            d for d in found if d.kind is DifferenceKind.PLAN and d.subscription_id == sub["id"]
        ]
        assert (plan.provider_value, plan.saascore_value) == ("business monthly", "pro monthly")
        assert plan.organization_id == org.id
        await core.reconciler.fix("stripe")
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.status is SubscriptionStatus.PAST_DUE
        assert ours.cancel_at_period_end
        assert ours.current_period_end == datetime.fromtimestamp(item["current_period_end"], UTC)
        assert await plan_of(core.database, org.id) == "business"
        assert "subscription.updated" in await reconciled_entries(core, org.id)
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == set()

        # The provider no longer has it: saascore ends it, the organisation goes back to free.
        del fake_stripe.state.subscriptions[sub["id"]]
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == {
            (sub["id"], DifferenceKind.MISSING_AT_PROVIDER)
        }
        await core.reconciler.fix("stripe")
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.status is SubscriptionStatus.CANCELED
        assert await plan_of(core.database, org.id) == "free"
        assert "subscription.canceled" in await reconciled_entries(core, org.id)
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == set()

    async def test_a_fix_leaves_the_provider_clock_to_the_provider(
        self, stripe_core: Saascore, fake_stripe: FakeStripe
    ) -> None:
        """saascore's clock an hour ahead of Stripe's: the fix keeps the subscription's
        provider time as the last webhook said, so a later webhook still applies."""
        core = stripe_core
        org = await core.orgs.create(name="Acme")
        t0 = int(time.time()) - 600
        sub = fake_stripe.state.add_subscription(
            customer=unique("cus"),
            price=STRIPE_PRICES[("pro", "monthly")],
            organization_id=org.id,
            period_start=t0,
        )

        async def deliver(type_: str, obj: dict[str, Any], created: int) -> str:
            raw, headers = signed(
                stripe_event(type_, obj, created=created),
                fake_stripe.webhook_secret,
                timestamp=int(time.time()),
            )
            receipt = await core.provider_webhooks.receive(
                "stripe", headers, raw, client_host="203.0.113.9"
            )
            return receipt.outcome.value

        assert await deliver("customer.subscription.created", sub, t0) == "processed"
        # Canceled at the period's end at Stripe; the webhook is lost.
        sub.update(cancel_at_period_end=True, cancel_at=t0 + 30 * 86_400)
        ahead = core.reconciler.clock
        core.reconciler.clock = lambda: ahead() + timedelta(hours=1)
        try:
            _, fixes = await core.reconciler.fix("stripe")
        finally:
            core.reconciler.clock = ahead
        assert [f.outcome for f in fixes if f.subscription_id == sub["id"]] == ["processed"]
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.cancel_at_period_end
        assert ours.provider_updated_at == datetime.fromtimestamp(t0, UTC)

        # Resumed at Stripe a minute after the first webhook: later than the provider's
        # last word, so applied (saascore's clock at the fix does not count).
        sub.update(cancel_at_period_end=False, cancel_at=None)
        assert await deliver("customer.subscription.updated", sub, t0 + 60) == "processed"
        [ours] = await subscriptions_of(core.database, org.id)
        assert not ours.cancel_at_period_end
        assert ours.provider_updated_at == datetime.fromtimestamp(t0 + 60, UTC)
        # An older one than that is still ignored.
        sub.update(cancel_at_period_end=True)
        assert await deliver("customer.subscription.updated", sub, t0 + 30) == "ignored"

    async def test_an_ended_subscription_is_ended(
        self, stripe_core: Saascore, fake_stripe: FakeStripe
    ) -> None:
        core = stripe_core
        org = await core.orgs.create(name="Acme")
        sub = fake_stripe.state.add_subscription(
            customer=unique("cus"), price=STRIPE_PRICES[("pro", "monthly")], organization_id=org.id
        )
        await core.reconciler.fix("stripe")
        sub.update(status="canceled", ended_at=int(datetime.now(UTC).timestamp()))
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == {
            (sub["id"], DifferenceKind.STATUS)
        }
        _, fixes = await core.reconciler.fix("stripe")
        assert [f.event.value for f in fixes if f.subscription_id == sub["id"]] == [
            "subscription_ended"
        ]
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.status is SubscriptionStatus.CANCELED
        assert mine(await core.reconciler.compare("stripe"), sub["id"]) == set()

    async def test_a_customer_of_another_organisation_is_not_moved(
        self, stripe_core: Saascore, fake_stripe: FakeStripe
    ) -> None:
        """The intake's rules hold: metadata naming B on A's customer changes nothing."""
        core = stripe_core
        a = await core.orgs.create(name="A")
        b = await core.orgs.create(name="B")
        customer = unique("cus")
        await core.provider_billing.link_customer(a.id, PaymentProvider.STRIPE, customer)
        sub = fake_stripe.state.add_subscription(
            customer=customer, price=STRIPE_PRICES[("pro", "monthly")], organization_id=b.id
        )
        _, fixes = await core.reconciler.fix("stripe")
        [fix] = [f for f in fixes if f.subscription_id == sub["id"]]
        assert fix.outcome == "ignored"
        assert "another organisation" in str(fix.reason)
        assert await subscriptions_of(core.database, b.id) == []
        assert await subscriptions_of(core.database, a.id) == []

    async def test_unreachable_and_unknown(
        self, stripe_core: Saascore, fake_stripe: FakeStripe
    ) -> None:
        fake_stripe.state.fail_next(500, times=10)
        with pytest.raises(ProviderUnavailable):
            await stripe_core.reconciler.compare("stripe")
        with pytest.raises(UnknownProvider):
            await stripe_core.reconciler.compare(PaymentProvider.MOCK)
        with pytest.raises(ProviderNotConfigured):
            await stripe_core.reconciler.fix(PaymentProvider.LEMON_SQUEEZY)


class TestLemonSqueezy:
    async def test_differences_found_fixed_and_gone(
        self, ls_core: Saascore, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        core = ls_core
        org = await core.orgs.create(name="Acme")
        customer = random.randrange(10**8, 10**9)
        sub_id = str(random.randrange(10**8, 10**9))
        await core.provider_billing.link_customer(
            org.id, PaymentProvider.LEMON_SQUEEZY, str(customer)
        )
        sub = ls_subscription(
            sub_id,
            customer_id=customer,
            variant_id=int(LS_VARIANTS[("pro", "monthly")]),
            store_id=fake_lemonsqueezy.store_id,
        )
        fake_lemonsqueezy.state.subscriptions[sub_id] = sub
        assert mine(await core.reconciler.compare("lemon_squeezy"), sub_id) == {
            (sub_id, DifferenceKind.MISSING_IN_SAASCORE)
        }
        await core.reconciler.fix("lemon_squeezy")
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.status is SubscriptionStatus.ACTIVE
        assert await plan_of(core.database, org.id) == "pro"
        assert mine(await core.reconciler.compare("lemon_squeezy"), sub_id) == set()

        # Cancelled at the provider (it runs to the period's end), on another variant.
        later = datetime.now(UTC) + timedelta(seconds=5)
        sub["attributes"].update(
            cancelled=True,
            variant_id=int(LS_VARIANTS[("business", "monthly")]),
            updated_at=later.isoformat().replace("+00:00", "Z"),
        )
        assert mine(await core.reconciler.compare("lemon_squeezy"), sub_id) == {
            (sub_id, DifferenceKind.PLAN),
            (sub_id, DifferenceKind.CANCEL_AT_PERIOD_END),
        }
        await core.reconciler.fix("lemon_squeezy")
        [ours] = await subscriptions_of(core.database, org.id)
        assert ours.cancel_at_period_end
        assert await plan_of(core.database, org.id) == "business"
        assert "subscription.updated" in await reconciled_entries(core, org.id)
        assert mine(await core.reconciler.compare("lemon_squeezy"), sub_id) == set()


class TestCli:
    async def test_reconcile_json_fix_and_table(
        self, scratch: Database, fake_stripe: FakeStripe, tmp_path: Any
    ) -> None:
        await sell_through_providers(scratch)
        core = Saascore(scratch.settings, database=scratch)
        org = await core.orgs.create(name="Acme")
        await core.close()
        sub = fake_stripe.state.add_subscription(
            customer=unique("cus"), price=STRIPE_PRICES[("pro", "monthly")], organization_id=org.id
        )
        env = {
            **clean_environment(),
            **settings_env(scratch.settings),
            "SAASCORE_STRIPE_SECRET_KEY": fake_stripe.api_key,
            "SAASCORE_STRIPE_WEBHOOK_SECRET": fake_stripe.webhook_secret,
            "SAASCORE_STRIPE_API_BASE": fake_stripe.url,
        }
        cli = Cli(tmp_path, env)
        found = cli("billing", "reconcile", "--provider", "stripe", "--json")
        assert found.returncode == 0, found
        document = json.loads(found.stdout)
        assert {
            (d["subscription_id"], d["kind"], d["organization_id"])
            for d in document["differences"]
            if d["subscription_id"] == sub["id"]
        } == {(sub["id"], "missing_in_saascore", str(org.id))}
        assert "fixes" not in document
        fixed = cli("billing", "reconcile", "--provider", "stripe", "--fix", "--json")
        assert fixed.returncode == 0, fixed
        [fix] = [f for f in json.loads(fixed.stdout)["fixes"] if f["subscription_id"] == sub["id"]]
        assert (fix["outcome"], fix["event"]) == ("processed", "subscription_updated")
        again = cli("billing", "reconcile", "--provider", "stripe")
        assert again.returncode == 0, again
        assert sub["id"] not in again.stdout
        [ours] = await subscriptions_of(scratch, org.id)
        assert ours.provider_subscription_id == sub["id"]

    def test_not_configured_and_unreachable(self, scratch: Database, tmp_path: Any) -> None:
        env = {**clean_environment(), **settings_env(scratch.settings)}
        cli = Cli(tmp_path, env)
        missing = cli("billing", "reconcile", "--provider", "lemonsqueezy")
        assert "SAASCORE_LEMONSQUEEZY_API_KEY" in missing.error_line()
        assert missing.stdout == ""
        down = cli.with_env(
            {
                "SAASCORE_STRIPE_SECRET_KEY": "sk_test_" + "x" * 24,
                "SAASCORE_STRIPE_WEBHOOK_SECRET": "whsec_x",
                "SAASCORE_STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
            }
        )("billing", "reconcile", "--provider", "stripe")
        assert "stripe" in down.error_line().lower()
        assert cli("billing", "reconcile", "--provider", "mock").returncode == 2
