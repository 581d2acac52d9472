"""`create_usage_router()`: `/v1/usage`, usage events, checks, reservations, limits and
summaries of the caller's organisation.

No endpoint here takes `SessionDep`: each makes one service call, which runs in a transaction
of its own, committed before the answer. That lets `POST /v1/usage/events` share PostgreSQL's
group commit with concurrent requests (the hot path), lets reads take read-only sessions (no
SQLite write lock), and keeps the sweep of a lapsed reservation that a settle or release
found, although it then answers 409.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status

from saascore.api.deps import CoreDep, OperatorDep, OriginDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import IdempotencyConflict, InvalidInput
from saascore.kit.validation import Day
from saascore.metering.errors import (
    CounterOverflow,
    LimitExceeded,
    PeriodClosed,
    ReservationNotFound,
    ReservationNotHeld,
    UnknownMetric,
    UnknownUser,
)
from saascore.metering.schemas import (
    PLAIN_TEXT,
    LimitOut,
    LimitOverride,
    ReservationCreate,
    ReservationOut,
    ReservationSettle,
    UsageBatch,
    UsageBatchRecorded,
    UsageCheckRequest,
    UsageCheckResponse,
    UsageEventRecorded,
    UsageEventRequest,
    UsageEventsBody,
    UsageLimitOut,
    UsageLimitsResponse,
    UsageMetric,
    UsageResponse,
    UsageSummaryResponse,
    UsageSummaryRowOut,
)
from saascore.metering.values import SummaryBy
from saascore.tenancy.errors import OrganizationNotFound

__all__ = [
    "GetUsage",
    "UsageReader",
    "UsageWriter",
    "create_limits_admin_router",
    "create_usage_admin_router",
    "create_usage_router",
    "saascore_usage",
]

#: The caller, a user or key of an organisation holding `usage:read` (a host app's usage
#: function may ask for it too: it is resolved once per request).
UsageReader = Annotated[Principal, Depends(require(Permission.USAGE_READ))]
UsageWriter = Annotated[Principal, Depends(require(Permission.USAGE_WRITE))]

#: A usage function for `GET /v1/usage`: a FastAPI dependency (it may ask for `UsageReader`,
#: `ReadSessionDep`, `CoreDep` or the host's own dependencies) answering a `UsageResponse`.
GetUsage = Callable[..., Awaitable[UsageResponse] | UsageResponse]


async def saascore_usage(principal: UsageReader, core: CoreDep) -> UsageResponse:
    """saascore's own usage: every metered metric in its current period, with its limit."""
    snapshots = await core.usage.limits(principal.tenant)
    return UsageResponse(
        metrics=[
            UsageMetric(
                metric=s.metric,
                used=s.used,
                limit=s.limit,
                reserved=s.reserved,
                period_start=s.period_start,
                period_end=s.period_end,
            )
            for s in snapshots
        ]
    )


_READ_ERRORS = (*AUTH_ERRORS, PermissionDenied)
#: What recording an event can refuse, beyond the caller's credentials.
_RECORD_ERRORS = (
    LimitExceeded,
    IdempotencyConflict,
    UnknownMetric,
    UnknownUser,
    PeriodClosed,
    CounterOverflow,
    InvalidInput,
)
_EVENT_BODY_EXAMPLES = {
    "one event": {
        "summary": "One event",
        "value": {
            "id": "evt_01J9ZK3Q8X",
            "metric": "tokens",
            "quantity": 1550,
            "model": "gpt-4o",
            "provider": "openai",
            "feature": "summarize",
            "input_tokens": 1200,
            "output_tokens": 350,
        },
    },
    "a batch": {
        "summary": "A batch of up to 1,000 events",
        "value": {
            "events": [
                {"id": "evt_1", "metric": "api_calls", "quantity": 1},
                {"id": "evt_2", "metric": "tokens", "quantity": 900},
            ]
        },
    },
}


def create_usage_router(get_usage: GetUsage = saascore_usage) -> APIRouter:
    """`/v1/usage`: record events, check and reserve quota, read limits and summaries.

    `GET /v1/usage` answers what `get_usage` counts (seed 004's `get_usage_fn`): by default
    `saascore_usage`, saascore's meters; a host app passes its own, a FastAPI dependency
    answering a `UsageResponse`, to count its own resources (research runs, generations).
    The caller is authenticated (`usage:read`) before `get_usage` runs.
    """
    router = APIRouter(prefix="/v1/usage", tags=["usage"])

    @router.get("", summary="Read the usage per metric", responses=error_responses(*_READ_ERRORS))
    async def read_usage(
        principal: UsageReader,
        # A default, not `Annotated`: annotations are strings here, and `get_usage` is local.
        usage: Any = Depends(get_usage),  # noqa: B008
    ) -> UsageResponse:
        """The organisation's usage per metric: used, limit and period."""
        return UsageResponse.model_validate(usage, from_attributes=True)

    @router.post(
        "/events",
        summary="Record usage events",
        status_code=status.HTTP_201_CREATED,
        response_model=UsageEventRecorded | UsageBatchRecorded,
        responses={
            200: {
                "model": UsageEventRecorded | UsageBatchRecorded,
                "description": "One event already recorded under its `id` (`duplicate`: the "
                "first result), or a batch's outcomes, one per event",
            },
            201: {"description": "One event was recorded (`accepted`): a `UsageEventRecorded`"},
            **error_responses(*_READ_ERRORS, *_RECORD_ERRORS),
        },
    )
    async def record_usage(
        body: Annotated[UsageEventsBody, Body(openapi_examples=_EVENT_BODY_EXAMPLES)],
        principal: UsageWriter,
        core: CoreDep,
        response: Response,
    ) -> UsageEventRecorded | UsageBatchRecorded:
        """Record one usage event (201, or 200 for a retry) or a batch (200, one outcome per
        event); over a hard limit one event is refused with 402 `limit_exceeded`. An event
        may be dated from the start of its meter's current period to 5 minutes ahead (else
        422 `period_closed`); backfill is for operators."""
        return await _record(core, principal.tenant, body, response, backfill=False)

    @router.post(
        "/check",
        summary="Check a quantity against its limit",
        responses=error_responses(*_READ_ERRORS, UnknownMetric, InvalidInput),
    )
    async def check_usage(
        body: UsageCheckRequest, principal: UsageReader, core: CoreDep
    ) -> UsageCheckResponse:
        """Would `quantity` more of a metric be allowed now? Records and holds nothing."""
        result = await core.usage.check(principal.tenant, body.metric, body.quantity)
        return UsageCheckResponse.of(result)

    @router.post(
        "/reservations",
        summary="Reserve usage",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *_READ_ERRORS,
            LimitExceeded,
            IdempotencyConflict,
            UnknownMetric,
            CounterOverflow,
            InvalidInput,
        ),
    )
    async def reserve_usage(
        body: ReservationCreate, principal: UsageWriter, core: CoreDep
    ) -> ReservationOut:
        """Hold quota before slow work; settle or release it after (402 when the limit has no
        room). A retry with the same `idempotency_key` answers the first reservation."""
        reservation = await core.usage.reserve(
            principal.tenant,
            body.metric,
            body.quantity,
            ttl=timedelta(seconds=body.ttl_seconds),
            idempotency_key=body.idempotency_key,
        )
        return ReservationOut.of(reservation)

    @router.post(
        "/reservations/{reservation_id}/settle",
        summary="Settle a reservation",
        responses=error_responses(
            *_READ_ERRORS,
            ReservationNotFound,
            ReservationNotHeld,
            LimitExceeded,
            UnknownUser,
            CounterOverflow,
            InvalidInput,
        ),
    )
    async def settle_reservation(
        reservation_id: uuid.UUID,
        body: ReservationSettle,
        principal: UsageWriter,
        core: CoreDep,
    ) -> UsageEventRecorded:
        """Record the real quantity of a held reservation and free what it held; more than was
        held is recorded only within a hard limit (else 402, and it stays held)."""
        result = await core.usage.settle(
            reservation_id,
            body.quantity,
            org_id=principal.tenant,
            user_id=body.user_id,
            feature=body.feature,
            model=body.model,
            provider=body.provider,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            cached_tokens=body.cached_tokens,
            properties=body.properties,
        )
        return UsageEventRecorded.of(f"reservation:{reservation_id}", result)

    @router.delete(
        "/reservations/{reservation_id}",
        summary="Release a reservation",
        responses=error_responses(*_READ_ERRORS, ReservationNotFound, ReservationNotHeld),
    )
    async def release_reservation(
        reservation_id: uuid.UUID, principal: UsageWriter, core: CoreDep
    ) -> ReservationOut:
        """Free a held reservation's quota without recording usage."""
        reservation = await core.usage.release(reservation_id, org_id=principal.tenant)
        return ReservationOut.of(reservation)

    @router.get("/limits", summary="Get usage limits", responses=error_responses(*_READ_ERRORS))
    async def usage_limits(principal: UsageReader, core: CoreDep) -> UsageLimitsResponse:
        """Every metric's usage, reservations and limit in its current period."""
        snapshots = await core.usage.limits(principal.tenant)
        return UsageLimitsResponse(limits=[UsageLimitOut.of(s) for s in snapshots])

    @router.get(
        "/summary",
        summary="Get a usage summary",
        responses=error_responses(*_READ_ERRORS, InvalidInput, UnknownMetric),
    )
    async def usage_summary(
        principal: UsageReader,
        core: CoreDep,
        start: Annotated[
            Day | None, Query(description="First day (UTC); default: this month's first")
        ] = None,
        end: Annotated[Day | None, Query(description="Last day (UTC); default: today")] = None,
        by: SummaryBy = SummaryBy.DAY,
        metric: Annotated[
            str | None, Query(min_length=1, max_length=100, pattern=PLAIN_TEXT)
        ] = None,
    ) -> UsageSummaryResponse:
        """Usage, tokens and cost between two days (inclusive), grouped by day, metric, model
        or feature, and by metric: different metrics are never added together. Sums are
        exact and may exceed int64."""
        today = core.usage.clock().date()
        start = start if start is not None else today.replace(day=1)
        end = end if end is not None else today
        if start > end:
            raise InvalidInput("start is after end", field="start")
        rows = await core.usage.summary(
            principal.tenant, start=start, end=end, by=by, metric=metric
        )
        return UsageSummaryResponse(
            start=start,
            end=end,
            by=by,
            metric=metric,
            rows=[UsageSummaryRowOut.of(row) for row in rows],
        )

    return router


async def _record(
    core: CoreDep,
    org_id: uuid.UUID,
    body: UsageEventRequest | UsageBatch,
    response: Response,
    *,
    backfill: bool,
) -> UsageEventRecorded | UsageBatchRecorded:
    """One event or a batch for the organisation, as `POST /v1/usage/events` answers it."""
    if isinstance(body, UsageBatch):
        outcomes = await core.usage.record_many(
            [event.to_event() for event in body.events], org_id=org_id, backfill=backfill
        )
        response.status_code = status.HTTP_200_OK
        return UsageBatchRecorded.of(outcomes)
    result = await core.usage.record(
        org_id,
        body.metric,
        body.quantity,
        idempotency_key=body.id,
        backfill=backfill,
        occurred_at=body.occurred_at,
        user_id=body.user_id,
        feature=body.feature,
        model=body.model,
        provider=body.provider,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        cached_tokens=body.cached_tokens,
        properties=body.properties,
    )
    if result.status == "duplicate":
        response.status_code = status.HTTP_200_OK
    return UsageEventRecorded.of(body.id, result)


def create_usage_admin_router() -> APIRouter:
    """`/v1/admin/organizations/{org_id}/usage/events`, for operators: record usage for an
    organisation in any period (backfill), as `saascore usage import` does."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.post(
        "/organizations/{org_id}/usage/events",
        summary="Backfill usage events",
        status_code=status.HTTP_201_CREATED,
        response_model=UsageEventRecorded | UsageBatchRecorded,
        responses={
            200: {
                "model": UsageEventRecorded | UsageBatchRecorded,
                "description": "One event already recorded under its `id`, or a batch's "
                "outcomes, one per event",
            },
            201: {"description": "One event was recorded (`accepted`)"},
            **error_responses(*OPERATOR_ERRORS, OrganizationNotFound, *_RECORD_ERRORS),
        },
    )
    async def backfill_usage(
        org_id: uuid.UUID,
        body: Annotated[UsageEventsBody, Body(openapi_examples=_EVENT_BODY_EXAMPLES)],
        operator: OperatorDep,
        core: CoreDep,
        response: Response,
    ) -> UsageEventRecorded | UsageBatchRecorded:
        """Record usage for an organisation as `POST /v1/usage/events` does, but dated in any
        period from 1970 to 9998 (backfill). Limits apply as for the tenant."""
        await core.orgs.get(org_id)
        return await _record(core, org_id, body, response, backfill=True)

    return router


_METRIC = Path(min_length=1, max_length=100, examples=["tokens"])


def create_limits_admin_router() -> APIRouter:
    """`/v1/admin/organizations/{org_id}/limits/{metric}`, for operators: override a plan's
    limit for one organisation, or drop the override (audited with the operator as actor)."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.put(
        "/organizations/{org_id}/limits/{metric}",
        summary="Override a limit",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, UnknownMetric),
    )
    async def set_limit(
        org_id: uuid.UUID,
        metric: Annotated[str, _METRIC],
        body: LimitOverride,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> LimitOut:
        """Override the plan's limit on a metric for this organisation (audited as
        `limit.overridden`)."""
        await core.orgs.get(org_id, session=session)
        limit = await core.usage.set_limit(
            org_id,
            metric,
            body.limit,
            hard=body.hard,
            actor=operator.actor(origin),
            session=session,
        )
        return LimitOut(metric=metric, limit=limit.value, hard=limit.hard, overridden=True)

    @router.delete(
        "/organizations/{org_id}/limits/{metric}",
        summary="Clear a limit override",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, UnknownMetric),
    )
    async def clear_limit(
        org_id: uuid.UUID,
        metric: Annotated[str, _METRIC],
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> LimitOut:
        """Drop the organisation's override on a metric: its plan's limit applies again
        (audited as `limit.override_cleared`). Answers the limit that now applies."""
        await core.orgs.get(org_id, session=session)
        limit = await core.usage.clear_limit(
            org_id, metric, actor=operator.actor(origin), session=session
        )
        return LimitOut(metric=metric, limit=limit.value, hard=limit.hard, overridden=False)

    return router
