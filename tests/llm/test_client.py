"""The metered LLM client against a fake gateway on loopback (a real HTTP server).

Every call commits in transactions of its own, so the tests use the module's `scratch`
database, each with an organisation (on the default catalog's `free` plan) and a model of its
own; state is read back from the database.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.llm import (
    ChatMessage,
    HttpGateway,
    LLMCallReplayed,
    LLMClient,
    LLMGatewayError,
    MockGateway,
    estimate_tokens,
)
from saascore.llm.errors import InvalidChatRequest
from saascore.metering.errors import LimitExceeded
from saascore.metering.service import UsageService
from saascore.models import (
    ModelPricing,
    ReservationStatus,
    UsageCounter,
    UsageEvent,
    UsageReservation,
)
from saascore.plans import PlanService
from saascore.testing import FakeLLMGateway
from tests.factories import create_organization, random_code

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PROMPT = [ChatMessage("system", "You are terse."), ChatMessage("user", "What is 2 + 2?")]


@dataclass(frozen=True)
class State:
    """The organisation's token metering, from the database."""

    reservations: list[tuple[ReservationStatus, int, int | None]]
    counter: tuple[int, int]
    events: list[tuple[str, int, int, int, int, str | None]]


async def state(database: Database, org_id: uuid.UUID) -> State:
    async with database.session(readonly=True) as s:
        reservations = (
            await s.execute(
                sa.select(
                    UsageReservation.status,
                    UsageReservation.quantity,
                    UsageReservation.settled_quantity,
                ).where(UsageReservation.organization_id == org_id)
            )
        ).all()
        counter = (
            await s.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(UsageCounter.used), 0),
                    sa.func.coalesce(sa.func.sum(UsageCounter.reserved), 0),
                ).where(UsageCounter.organization_id == org_id, UsageCounter.metric == "tokens")
            )
        ).one()
        events = (
            await s.execute(
                sa.select(
                    UsageEvent.idempotency_key,
                    UsageEvent.quantity,
                    UsageEvent.input_tokens,
                    UsageEvent.output_tokens,
                    UsageEvent.cost_micros,
                    UsageEvent.model,
                ).where(UsageEvent.organization_id == org_id)
            )
        ).all()
    return State(
        [tuple(r) for r in reservations],  # type: ignore[misc]
        (int(counter[0]), int(counter[1])),
        [tuple(e) for e in events],  # type: ignore[misc]
    )


async def committed_org(database: Database) -> uuid.UUID:
    async with database.transaction() as s:
        plan = await PlanService(database).get_by_code("free", session=s)
        return (await create_organization(s, plan=plan)).id


async def priced_model(database: Database, *, input: int, output: int) -> str:
    """A model of the test's own, priced in micro-units per million tokens."""
    model = random_code("model")
    async with database.transaction() as s:
        s.add(
            ModelPricing(
                provider="acme",
                model=model,
                input_micros_per_million=input,
                output_micros_per_million=output,
                effective_from=EPOCH,
            )
        )
    return model


def client(database: Database, url: str, **options: float) -> LLMClient:
    gateway = HttpGateway(
        url,
        api_key="test-key",
        timeout=options.get("timeout", 10.0),
        max_retries=int(options.get("max_retries", 2)),
        backoff=0,
    )
    return LLMClient(UsageService(database), gateway, provider="acme")


class TestSettle:
    async def test_the_reservation_is_settled_with_the_real_usage_and_priced(
        self, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        # 1 micro-unit an input token, 10 an output token.
        model = await priced_model(scratch, input=1_000_000, output=10_000_000)
        async with FakeLLMGateway(prompt_tokens=100, completion_tokens=20) as gateway:
            llm = client(scratch, gateway.url)
            try:
                result = await llm.chat(
                    org_id, PROMPT, model=model, max_tokens=500, call_id="call-1"
                )
            finally:
                await llm.aclose()
        assert gateway.requests == [
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "What is 2 + 2?"},
                ],
                "max_tokens": 500,
            }
        ]
        estimate = estimate_tokens(PROMPT) + 500
        assert (result.input_tokens, result.output_tokens, result.cost_micros) == (100, 20, 300)
        assert (result.reserved_tokens, result.content) == (estimate, "answer 1")
        after = await state(scratch, org_id)
        assert after.reservations == [(ReservationStatus.SETTLED, estimate, 120)]
        assert after.counter == (120, 0)
        assert len(after.events) == 1
        assert after.events[0][1:] == (120, 100, 20, 300, model)

    async def test_a_5xx_is_retried_and_then_settled(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        async with FakeLLMGateway(fail_times=2, prompt_tokens=10, completion_tokens=5) as gw:
            llm = client(scratch, gw.url, max_retries=2)
            try:
                result = await llm.chat(org_id, PROMPT, model="unpriced", max_tokens=50)
            finally:
                await llm.aclose()
        assert len(gw.requests) == 3
        assert (result.input_tokens, result.output_tokens, result.cost_micros) == (10, 5, 0)
        assert (await state(scratch, org_id)).counter == (15, 0)

    async def test_usage_past_the_limit_after_the_call_is_recorded_anyway(
        self, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        await UsageService(scratch).set_limit(org_id, "tokens", 1000)
        async with FakeLLMGateway(prompt_tokens=5000, completion_tokens=20) as gateway:
            llm = client(scratch, gateway.url)
            try:
                result = await llm.chat(
                    org_id, PROMPT, model="unpriced", max_tokens=10, call_id="big"
                )
            finally:
                await llm.aclose()
        assert result.input_tokens == 5000
        after = await state(scratch, org_id)
        assert after.reservations == [
            (ReservationStatus.RELEASED, estimate_tokens(PROMPT) + 10, None)
        ]
        assert after.counter == (5020, 0)
        assert [(key, quantity) for key, quantity, *_ in after.events] == [("llm:big", 5020)]

    async def test_a_caller_gone_once_the_tokens_are_spent_still_has_them_recorded(
        self, scratch: Database
    ) -> None:
        """The caller is cancelled after the gateway answered, while the usage is being
        recorded: the tokens are spent, so they are recorded all the same."""
        org_id = await committed_org(scratch)
        async with FakeLLMGateway(prompt_tokens=30, completion_tokens=7) as gateway:
            llm = client(scratch, gateway.url)
            settling, go_on = asyncio.Event(), asyncio.Event()
            settle = llm.usage.settle

            async def held(*args: Any, **kwargs: Any) -> Any:
                settling.set()
                await go_on.wait()
                return await settle(*args, **kwargs)

            llm.usage.settle = held  # type: ignore[method-assign]
            try:
                call = asyncio.create_task(
                    llm.chat(org_id, PROMPT, model="unpriced", max_tokens=50, call_id="gone")
                )
                await settling.wait()
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                go_on.set()
                for _ in range(200):  # until the shielded recording has committed
                    if (await state(scratch, org_id)).counter != (0, estimate_tokens(PROMPT) + 50):
                        break
                    await asyncio.sleep(0.01)
            finally:
                await llm.aclose()
        after = await state(scratch, org_id)
        assert after.reservations == [(ReservationStatus.SETTLED, estimate_tokens(PROMPT) + 50, 37)]
        assert after.counter == (37, 0)


class TestRelease:
    async def test_released_when_the_gateway_keeps_failing(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        async with FakeLLMGateway(fail_times=100) as gateway:
            llm = client(scratch, gateway.url, max_retries=2)
            try:
                with pytest.raises(LLMGatewayError) as raised:
                    await llm.chat(org_id, PROMPT, model="m", max_tokens=100)
            finally:
                await llm.aclose()
        assert raised.value.code == "llm_gateway_error"
        assert len(gateway.requests) == 3  # the first try and two retries
        after = await state(scratch, org_id)
        assert after.reservations == [
            (ReservationStatus.RELEASED, estimate_tokens(PROMPT) + 100, None)
        ]
        assert after.counter == (0, 0)
        assert after.events == []

    async def test_released_on_a_timeout(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        async with FakeLLMGateway(delay=5.0) as gateway:
            llm = client(scratch, gateway.url, timeout=0.2, max_retries=0)
            try:
                with pytest.raises(LLMGatewayError):
                    await llm.chat(org_id, PROMPT, model="m", max_tokens=100)
            finally:
                await llm.aclose()
        after = await state(scratch, org_id)
        assert [status for status, *_ in after.reservations] == [ReservationStatus.RELEASED]
        assert (after.counter, after.events) == ((0, 0), [])

    async def test_a_4xx_is_not_retried(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        async with FakeLLMGateway(fail_times=100, fail_status=400) as gateway:
            llm = client(scratch, gateway.url, max_retries=3)
            try:
                with pytest.raises(LLMGatewayError):
                    await llm.chat(org_id, PROMPT, model="m", max_tokens=100)
            finally:
                await llm.aclose()
        assert len(gateway.requests) == 1
        assert (await state(scratch, org_id)).counter == (0, 0)


class TestRefusal:
    async def test_over_the_limit_is_refused_before_any_request(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        await UsageService(scratch).set_limit(org_id, "tokens", 100)
        async with FakeLLMGateway() as gateway:
            llm = client(scratch, gateway.url)
            try:
                with pytest.raises(LimitExceeded):
                    await llm.chat(org_id, PROMPT, model="m", max_tokens=500)
            finally:
                await llm.aclose()
        assert gateway.requests == []
        after = await state(scratch, org_id)
        assert (after.reservations, after.counter, after.events) == ([], (0, 0), [])

    async def test_a_call_id_is_spent_once(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        async with FakeLLMGateway() as gateway:
            llm = client(scratch, gateway.url)
            try:
                await llm.chat(org_id, PROMPT, model="m", max_tokens=50, call_id="once")
                with pytest.raises(LLMCallReplayed):
                    await llm.chat(org_id, PROMPT, model="m", max_tokens=50, call_id="once")
            finally:
                await llm.aclose()
        assert len(gateway.requests) == 1
        assert len((await state(scratch, org_id)).events) == 1

    @pytest.mark.parametrize(
        ("messages", "options"),
        [
            ([], {}),
            ([ChatMessage("robot", "hi")], {}),
            (PROMPT, {"max_tokens": 0}),
            (PROMPT, {"max_tokens": 2**63}),
            (PROMPT, {"model": ""}),
            (PROMPT, {"call_id": "x" * 201}),
            ([ChatMessage("user", "x" * 1_000_001)], {}),
        ],
    )
    async def test_a_bad_request_is_refused_before_metering(
        self, scratch: Database, messages: list[ChatMessage], options: dict[str, object]
    ) -> None:
        org_id = await committed_org(scratch)
        llm = LLMClient(UsageService(scratch), MockGateway())
        kwargs: dict[str, object] = {"model": "m", "max_tokens": 10, **options}
        with pytest.raises(InvalidChatRequest):
            await llm.chat(org_id, messages, **kwargs)  # type: ignore[arg-type]
        assert (await state(scratch, org_id)).reservations == []


class TestMock:
    async def test_the_mock_is_deterministic_and_metered(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        model = await priced_model(scratch, input=1_000_000, output=1_000_000)
        first = LLMClient(UsageService(scratch), MockGateway())
        second = LLMClient(UsageService(scratch), MockGateway())
        a = await first.chat(org_id, PROMPT, model=model, max_tokens=64)
        b = await second.chat(org_id, PROMPT, model=model, max_tokens=64)
        other = await first.chat(
            org_id, [ChatMessage("user", "something else")], model=model, max_tokens=64
        )
        assert (a.content, a.input_tokens, a.output_tokens) == (
            b.content,
            b.input_tokens,
            b.output_tokens,
        )
        assert a.call_id != b.call_id
        assert other.content != a.content
        assert a.cost_micros == a.input_tokens + a.output_tokens
        after = await state(scratch, org_id)
        total = sum(r.input_tokens + r.output_tokens for r in (a, b, other))
        assert after.counter == (total, 0)
        assert len(after.events) == 3
