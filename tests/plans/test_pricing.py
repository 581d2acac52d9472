"""Model prices: the `[[model_pricing]]` of a catalog, the default price list, and loading them
as price versions, idempotently."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.metering import UsageService
from saascore.metering.values import cost_micros
from saascore.models import ModelPricing
from saascore.plans import (
    ModelPriceSpec,
    ModelPricingService,
    PlanService,
    read_catalog,
    read_default_pricing,
)
from tests.factories import create_organization, random_code


def sample(name: str, **labels: str) -> float:
    """A Prometheus sample of this process, 0 when it was never incremented."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def pricing(database: Database) -> ModelPricingService:
    return ModelPricingService(database)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text, encoding="utf-8")
    return path


def price(model: str, **values: Any) -> ModelPriceSpec:
    fields: dict[str, Any] = {
        "provider": "acme",
        "model": model,
        "input_micros_per_million": 1_000_000,
        "output_micros_per_million": 4_000_000,
        "effective_from": "2025-01-01",
        "source": "https://acme.example/pricing",
        "as_of": "2025-01-01",
        **values,
    }
    return ModelPriceSpec.model_validate(fields)


async def versions(session: AsyncSession, model: str) -> list[dict[str, Any]]:
    """The model's price rows, straight from the database, oldest first (no `updated_at`)."""
    table = ModelPricing.__table__
    rows = await session.execute(
        sa.select(table).where(table.c.model == model).order_by(table.c.effective_from)
    )
    return [{k: v for k, v in row._asdict().items() if k != "updated_at"} for row in rows]


class TestDefaultPriceList:
    def test_names_the_major_providers_each_price_with_its_source_and_date(self) -> None:
        prices = read_default_pricing().model_pricing
        assert {p.provider for p in prices} >= {"openai", "anthropic", "google", "mistral"}
        today = datetime.now(UTC).date()
        for entry in prices:
            assert entry.source is not None
            assert entry.source.startswith("https://")
            assert entry.as_of is not None
            assert entry.as_of <= today
            assert entry.input_micros_per_million > 0
            assert entry.output_micros_per_million > 0
        # the unit: micro-dollars per million tokens ($2.50 per million is 2_500_000)
        gpt4o = next(p for p in prices if (p.provider, p.model) == ("openai", "gpt-4o"))
        assert (gpt4o.input_micros_per_million, gpt4o.output_micros_per_million) == (
            2_500_000,
            10_000_000,
        )

    def test_the_default_catalog_carries_the_default_price_list(self) -> None:
        assert read_catalog().model_pricing == read_default_pricing().model_pricing


class TestReadPrices:
    def test_a_day_starts_at_midnight_utc_and_cached_defaults_to_input(
        self, tmp_path: Path
    ) -> None:
        catalog = read_catalog(
            write(
                tmp_path,
                "[[model_pricing]]\nprovider = 'acme'\nmodel = 'm'\n"
                "input_micros_per_million = 3\noutput_micros_per_million = 5\n"
                "effective_from = 2025-06-01\nas_of = 2025-05-30\n",
            )
        )
        (entry,) = catalog.model_pricing
        assert entry.effective_from == datetime(2025, 6, 1, tzinfo=UTC)
        assert entry.as_of == date(2025, 5, 30)
        assert entry.columns()["cached_input_micros_per_million"] == 3

    @pytest.mark.parametrize(
        ("entry", "words"),
        [
            ("input_micros_per_million = -1", "model_pricing.0.input_micros_per_million"),
            ("input_micros_per_million = 9223372036854775808", "input_micros_per_million"),
            ("input_micros_per_million = nan", "input_micros_per_million"),
            ("input_micros_per_million = 2.5", "input_micros_per_million"),
            ("model = ''", "model_pricing.0.model"),
            ("model = '   '", "model_pricing.0.model"),
            ("currency = 'EUR'", "model_pricing.0.currency"),
            ("effective_from = 1700000000", "model_pricing.0.effective_from"),
            ("bogus = 1", "model_pricing.0.bogus"),
        ],
    )
    def test_a_bad_entry_is_refused_naming_it(self, tmp_path: Path, entry: str, words: str) -> None:
        fields = {
            "provider": "'acme'",
            "model": "'m'",
            "input_micros_per_million": "1",
            "output_micros_per_million": "1",
            "effective_from": "2025-06-01",
        }
        key = entry.split(" = ")[0]
        fields[key] = entry.split(" = ", 1)[1]
        text = "[[model_pricing]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
        with pytest.raises(InvalidInput, match=words.replace(".", r"\.")):
            read_catalog(write(tmp_path, text))

    def test_two_prices_for_one_version_are_refused(self, tmp_path: Path) -> None:
        entry = (
            "[[model_pricing]]\nprovider = 'acme'\nmodel = 'm'\ninput_micros_per_million = 1\n"
            "output_micros_per_million = 1\neffective_from = 2025-06-01\n"
        )
        with pytest.raises(InvalidInput, match="two prices of acme m"):
            read_catalog(write(tmp_path, entry + entry))


class TestLoad:
    async def test_loading_twice_changes_nothing(
        self, pricing: ModelPricingService, session: AsyncSession
    ) -> None:
        prices = read_default_pricing().model_pricing
        first = await pricing.load(prices, session=session)
        assert len(first.created) == len(prices)
        assert first.updated == first.unchanged == []
        stored = await versions(session, "gpt-4o")
        again = await pricing.load(prices, session=session)
        assert again.created == again.updated == []
        assert len(again.unchanged) == len(prices)
        assert await versions(session, "gpt-4o") == stored

    async def test_a_new_effective_from_adds_a_version_and_keeps_the_old(
        self, pricing: ModelPricingService, session: AsyncSession
    ) -> None:
        model = random_code("model")
        await pricing.load([price(model)], session=session)
        newer = price(model, input_micros_per_million=500_000, effective_from="2025-07-01")
        result = await pricing.load([price(model), newer], session=session)
        assert result.created == [f"acme/{model} from 2025-07-01"]
        assert result.unchanged == [f"acme/{model} from 2025-01-01"]
        rows = await versions(session, model)
        assert [(r["effective_from"], r["input_micros_per_million"]) for r in rows] == [
            (datetime(2025, 1, 1, tzinfo=UTC), 1_000_000),
            (datetime(2025, 7, 1, tzinfo=UTC), 500_000),
        ]

    async def test_a_changed_version_is_corrected_in_place(
        self, pricing: ModelPricingService, session: AsyncSession
    ) -> None:
        model = random_code("model")
        await pricing.load([price(model)], session=session)
        (before,) = await versions(session, model)
        corrected = price(model, output_micros_per_million=4_400_000, as_of="2025-02-01")
        row, outcome = await pricing.put(corrected, session=session)
        assert outcome == "updated"
        (after,) = await versions(session, model)
        assert after["id"] == before["id"] == row.id
        assert (after["output_micros_per_million"], after["as_of"]) == (
            4_400_000,
            date(2025, 2, 1),
        )

    async def test_list_filters_and_shows_the_newest_version_first(
        self, pricing: ModelPricingService, session: AsyncSession
    ) -> None:
        model = random_code("model")
        await pricing.load(
            [price(model), price(model, effective_from="2025-03-01")], session=session
        )
        rows = await pricing.list(provider="acme", model=model, session=session)
        assert [r.effective_from.date() for r in rows] == [date(2025, 3, 1), date(2025, 1, 1)]
        assert rows[0].source == "https://acme.example/pricing"


class TestCatalogPricesUsage:
    async def test_the_default_catalog_prices_tokens_and_an_unpriced_model_costs_zero(
        self, database: Database, session: AsyncSession
    ) -> None:
        result = await PlanService(database).load_catalog(read_catalog(), session=session)
        assert len(result.prices.created) == len(read_default_pricing().model_pricing)
        org = await create_organization(session)
        usage = UsageService(database)
        gpt = next(p for p in read_default_pricing().model_pricing if p.model == "gpt-4o-mini")
        priced = await usage.record(
            org.id,
            "tokens",
            1_500,
            idempotency_key="priced",
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=1_000,
            output_tokens=500,
            session=session,
        )
        columns = gpt.columns()
        expected = cost_micros(
            ModelPricing(**columns), input_tokens=1_000, output_tokens=500, cached=0
        )
        assert priced.cost_micros == expected == 450  # $0.15/M in, $0.60/M out
        labels = {"provider": "other", "model": "other"}
        before = sample("saascore_usage_unpriced_model_total", **labels)
        unpriced = await usage.record(
            org.id,
            "tokens",
            10,
            idempotency_key="unpriced",
            model=random_code("model"),
            provider="nobody",
            input_tokens=10,
            session=session,
        )
        assert (unpriced.status, unpriced.cost_micros) == ("accepted", 0)
        assert sample("saascore_usage_unpriced_model_total", **labels) == before + 1
