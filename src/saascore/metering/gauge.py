"""The storage gauge's conditional change: one UPDATE of `usage_limits.storage_used_bytes`.

The UPDATE adds (or, negative, subtracts) bytes only if the total stays at or above zero and,
for an increment, within a BIGINT and the organisation's hard storage limit: racing changes
queue on the organisation's row, and each is decided on the total the one before it left.
A change that matches no row changed nothing; the caller finds out why (the organisation has
no `usage_limits` row yet, or the change does not fit).

On PostgreSQL the limit is resolved inside the statement (`RESOLVED_CAP`, the rule of
`limits.resolution_sql`), reading the overrides of the very row version the UPDATE decides
on: a change is one statement, with no read of the limit before it. On SQLite the caller
passes the cap it read; its write transactions take the database's write lock first
(`BEGIN IMMEDIATE`), so nothing changes the limit between the read and the UPDATE.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, cast

import sqlalchemy as sa

from saascore.metering.limits import resolution_sql
from saascore.metering.values import BIGINT_MAX, STORAGE
from saascore.models import UsageLimits

__all__ = [
    "RESOLVED_CAP",
    "RESOLVED_CAP_SQL",
    "storage_change",
    "storage_increment",
    "storage_increment_sql",
]

#: The row the UPDATE changes, by the name `resolution_sql` reads the overrides from.
_ROW: Final = cast(sa.Alias, UsageLimits.__table__.alias("ul"))

_VALUE, _HARD = resolution_sql(f"'{STORAGE}'")
#: The hard storage limit of the organisation whose row is being updated (NULL: none, or a
#: soft one), resolved by PostgreSQL. Built from constants only.
RESOLVED_CAP_SQL: Final = (
    f"(SELECT CASE WHEN {_HARD} AND {_VALUE} >= 0 THEN {_VALUE} END"  # noqa: S608
    " FROM organizations o JOIN subscription_plans p ON p.id = o.plan_id"
    f" LEFT JOIN plan_limits pl ON pl.plan_id = p.id AND pl.metric = '{STORAGE}'"
    " WHERE o.id = ul.organization_id)"
)
RESOLVED_CAP: Final = sa.literal_column(RESOLVED_CAP_SQL, sa.BigInteger())


def storage_change(
    org_id: uuid.UUID,
    delta_bytes: int,
    now: datetime,
    cap: sa.ColumnElement[Any] | int | None,
) -> sa.Update:
    """The conditional UPDATE of the organisation's gauge by `delta_bytes` (at most a BIGINT
    either way), returning the new total. `cap` bounds an increment: `RESOLVED_CAP`
    (PostgreSQL), or the hard limit the caller read (None: none); a change of nothing passes
    whatever the limit."""
    if delta_bytes < 0:
        used = _ROW.c.storage_used_bytes
        return _update(org_id, used >= -delta_bytes, delta_bytes, now)
    return storage_increment(org_id, delta_bytes, now, cap if delta_bytes else None)


def storage_increment(
    org_id: Any, delta_bytes: Any, now: Any, cap: sa.ColumnElement[Any] | int | None
) -> sa.Update:
    """`storage_change` of a `delta_bytes` >= 0 whose values may be bind parameters (for a
    statement built once). It always compares with `cap`: a change of nothing over the limit
    matches nothing here, and the `storage_change` its caller then runs lets it pass."""
    # Compared as `used <= cap - delta`, which cannot pass a BIGINT itself.
    most = sa.literal(BIGINT_MAX, sa.BigInteger())
    bound: sa.ColumnElement[Any] | int
    if cap is None:
        bound = most
    elif isinstance(cap, int):
        bound = cap
    else:
        bound = sa.func.coalesce(cap, most)
    return _update(org_id, _ROW.c.storage_used_bytes <= bound - delta_bytes, delta_bytes, now)


def _update(org_id: Any, fits: sa.ColumnElement[bool], delta_bytes: Any, now: Any) -> sa.Update:
    used = _ROW.c.storage_used_bytes
    return (
        sa.update(_ROW)
        .where(_ROW.c.organization_id == org_id, fits)
        .values(storage_used_bytes=used + delta_bytes, updated_at=now)
        .returning(used)
    )


def storage_increment_sql(org_id: str, delta_bytes: str, now: str, when: str = "TRUE") -> str:
    """`storage_increment` with `RESOLVED_CAP` as SQL text, for a statement written as text
    on PostgreSQL (its arguments are SQL expressions: bind parameters, constants), changing
    the gauge only where `when` holds too. It returns the new total as `storage_used_bytes`."""
    return f"""\
UPDATE usage_limits AS ul
  SET storage_used_bytes = ul.storage_used_bytes + {delta_bytes}, updated_at = {now}
  WHERE ul.organization_id = {org_id}
    AND ul.storage_used_bytes <= coalesce({RESOLVED_CAP_SQL}, {BIGINT_MAX}) - {delta_bytes}
    AND {when}
  RETURNING ul.storage_used_bytes"""  # noqa: S608
