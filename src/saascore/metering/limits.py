"""An organisation's limit on a metric: where it comes from, what it enforces, how it changes.

A limit is resolved in this order: the organisation's own override (`usage_limits.overrides`,
set by `UsageService.set_limit`), else its plan's `plan_limits` row for the metric, else the
plan's seed 000 column for the metric (`PLAN_COLUMNS`), else unlimited. A stored value that is
NULL or negative is unlimited. A soft limit is reported but never refuses; an override or a
plan column is hard unless it says otherwise.

`LimitRules.limit` is that rule in Python, used by every path that decides in Python (the
batch engine, reservations, checks); `resolution_sql` is the same rule in SQL, for the one
statement that decides inside PostgreSQL (`postgres.RECORD`). Both are built from
`PLAN_COLUMNS`, and the differential test runs them side by side.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.errors import NotFound
from saascore.metering.accounts import usage_account
from saascore.metering.values import API_CALLS, MIB, STORAGE, TOKENS
from saascore.models import Organization, PlanLimit, SubscriptionPlan, UsageLimits

__all__ = [
    "PLAN_COLUMNS",
    "Limit",
    "LimitRules",
    "clear_override",
    "read_limit",
    "read_rules",
    "resolution_sql",
    "set_override",
    "unlimited",
]

#: The plan column that gives a metric's limit when no override and no `plan_limits` row
#: does, and the unit the column counts in (storage is in MiB, its meter in bytes).
PLAN_COLUMNS: dict[str, tuple[str, int]] = {
    TOKENS: ("monthly_token_limit", 1),
    STORAGE: ("max_storage_mb", MIB),
    API_CALLS: ("max_api_calls_per_day", 1),
}


@dataclass(frozen=True)
class Limit:
    """An organisation's limit on a metric: None is unlimited; a soft limit never refuses."""

    value: int | None
    hard: bool = True

    def refuses(self, total: int) -> bool:
        return self.hard and self.value is not None and total > self.value

    @property
    def cap(self) -> int | None:
        """The total a conditional write may not pass: the value of a hard limit, else None."""
        return self.value if self.hard else None


def unlimited(value: Any) -> int | None:
    """A limit as stored (None or negative: unlimited) as a limit value."""
    return None if value is None or int(value) < 0 else int(value)


@dataclass(frozen=True)
class LimitRules:
    """What decides an organisation's limits: its own overrides, then its plan's `plan_limits`
    rows, then the plan's columns (see the module)."""

    overrides: dict[str, Any]
    plan_limits: dict[str, tuple[int | None, bool]]
    plan_columns: dict[str, int | None]

    @classmethod
    def of(
        cls,
        overrides: dict[str, Any] | None,
        plan_limits: dict[str, tuple[int | None, bool]],
        *,
        monthly_token_limit: int | None,
        max_storage_mb: int | None,
        max_api_calls_per_day: int | None,
    ) -> LimitRules:
        columns = {
            "monthly_token_limit": monthly_token_limit,
            "max_storage_mb": max_storage_mb,
            "max_api_calls_per_day": max_api_calls_per_day,
        }
        plan_columns: dict[str, int | None] = {}
        for metric, (column, unit) in PLAN_COLUMNS.items():
            value = columns[column]
            plan_columns[metric] = None if value is None else value * unit
        return cls(overrides or {}, plan_limits, plan_columns)

    def limit(self, metric: str) -> Limit:
        override = self.overrides.get(metric)
        if isinstance(override, dict):
            return Limit(unlimited(override.get("limit")), bool(override.get("hard", True)))
        if metric in self.plan_limits:
            value, hard = self.plan_limits[metric]
            return Limit(unlimited(value), bool(hard))
        return Limit(unlimited(self.plan_columns.get(metric)))


def resolution_sql(metric: str) -> tuple[str, str]:
    """`LimitRules.limit` in PostgreSQL: the expressions of the limit's value as stored (the
    caller reads a negative one as unlimited, as `unlimited` does) and of whether it is hard.
    `metric` is the SQL naming the metric; the statement joins `usage_limits ul`, the metric's
    `plan_limits pl` (outer) and `subscription_plans p`."""
    override = f"ul.overrides -> {metric}"
    overridden = f"jsonb_typeof({override}) = 'object'"
    columns = " ".join(
        f"WHEN {metric} = '{code}' THEN p.{column}" + (f" * {unit}" if unit != 1 else "")
        for code, (column, unit) in PLAN_COLUMNS.items()
    )
    value = (
        f"CASE WHEN {overridden} THEN ({override} ->> 'limit')::bigint"
        f" WHEN pl.id IS NOT NULL THEN pl.limit_value {columns} END"
    )
    hard = (
        f"CASE WHEN {overridden} THEN coalesce(({override} ->> 'hard')::boolean, true)"
        " WHEN pl.id IS NOT NULL THEN pl.is_hard ELSE true END"
    )
    return value, hard


async def read_rules(s: AsyncSession, orgs: Iterable[uuid.UUID]) -> dict[uuid.UUID, LimitRules]:
    """The limit rules of the organisations that exist among `orgs`, in one query."""
    rows = await s.execute(
        sa.select(
            Organization.id,
            UsageLimits.overrides,
            SubscriptionPlan.monthly_token_limit,
            SubscriptionPlan.max_storage_mb,
            SubscriptionPlan.max_api_calls_per_day,
            PlanLimit.metric,
            PlanLimit.limit_value,
            PlanLimit.is_hard,
        )
        .select_from(Organization)
        .join(SubscriptionPlan, SubscriptionPlan.id == Organization.plan_id)
        .outerjoin(UsageLimits, UsageLimits.organization_id == Organization.id)
        .outerjoin(PlanLimit, PlanLimit.plan_id == SubscriptionPlan.id)
        .where(Organization.id.in_(set(orgs)))
    )
    found: dict[uuid.UUID, tuple[Any, ...]] = {}
    plan_limits: dict[uuid.UUID, dict[str, tuple[int | None, bool]]] = {}
    for org, overrides, tokens, storage_mb, api_calls, metric, value, hard in rows:
        found.setdefault(org, (overrides, tokens, storage_mb, api_calls))
        limits = plan_limits.setdefault(org, {})
        if metric is not None:
            limits[metric] = (value, hard)
    return {
        org: LimitRules.of(
            overrides,
            plan_limits[org],
            monthly_token_limit=tokens,
            max_storage_mb=storage_mb,
            max_api_calls_per_day=api_calls,
        )
        for org, (overrides, tokens, storage_mb, api_calls) in found.items()
    }


async def read_limit(s: AsyncSession, org_id: uuid.UUID, metric: str) -> Limit:
    """The organisation's limit on `metric` (`NotFound` for an organisation that does not
    exist)."""
    rules = (await read_rules(s, (org_id,))).get(org_id)
    if rules is None:
        raise NotFound(f"no organisation {org_id}", organization=str(org_id))
    return rules.limit(metric)


async def set_override(
    s: AsyncSession,
    org_id: uuid.UUID,
    metric: str,
    limit: int | None,
    *,
    hard: bool,
    now: datetime,
) -> dict[str, Any] | None:
    """Write the organisation's override of `metric` (its `usage_limits` row locked); the
    override it replaces (None: none). The same override again writes nothing."""
    account = await usage_account(s, org_id)
    overrides = dict(account.overrides or {})
    previous: dict[str, Any] | None = overrides.get(metric)
    current = {"limit": unlimited(limit), "hard": hard}
    if previous != current:
        overrides[metric] = current
        account.overrides = overrides
        account.updated_at = now
        await s.flush()
    return previous


async def clear_override(
    s: AsyncSession, org_id: uuid.UUID, metric: str, *, now: datetime
) -> dict[str, Any] | None:
    """Drop the organisation's override of `metric`; the override dropped (None: there was
    none, and nothing is written)."""
    account = await usage_account(s, org_id)
    overrides = dict(account.overrides or {})
    previous: dict[str, Any] | None = overrides.pop(metric, None)
    if previous is not None:
        account.overrides = overrides
        account.updated_at = now
        await s.flush()
    return previous
