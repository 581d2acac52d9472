"""Gapless invoice numbers, taken in the transaction that finalises the invoice.

A number is the next value of a counter row in `invoice_sequences`, incremented by one atomic
upsert (`INSERT ... ON CONFLICT DO UPDATE SET last_number = last_number + 1 RETURNING`). The
statement leaves the row locked until the caller's transaction ends: on PostgreSQL the row
lock makes every other finaliser of the series wait; on SQLite the database's write lock does.
A transaction that rolls back after taking a number so gives it back, and the next finaliser
takes that same number: the committed numbers of a series run 1, 2, 3, ... with no gap and no
repeat. The price is that finalisations of one series are serialised for the rest of their
transactions, so take the number last, just before the commit.

The number is formatted by `Settings.invoice_number_template` (`{prefix}-{year}-{seq:04d}`).
A series is the scope (`platform`, or one per organisation) plus the year when the template
shows `{year}`, so the numbers restart at 1 each year.
"""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from saascore.config import INVOICE_NUMBER_MAX_LENGTH, InvoiceSequenceScope, Settings
from saascore.kit import sql
from saascore.kit.errors import ConfigurationError
from saascore.kit.time import utcnow
from saascore.models import InvoiceSequence

__all__ = [
    "allocate_in_series",
    "allocate_invoice_number",
    "format_invoice_number",
    "next_in_series",
    "series_key",
]


def _uses_year(template: str) -> bool:
    return any(name == "year" for _, name, _, _ in string.Formatter().parse(template))


def _year(at: datetime) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: pass a timezone-aware value")
    return at.astimezone(UTC).year


def series_key(settings: Settings, *, organization_id: uuid.UUID, at: datetime) -> str:
    """The series an invoice of `organization_id` finalised at `at` takes its number from.

    `platform/2026` or `org/<organization id>/2026`; without `{year}` in the template, no year.
    """
    if settings.invoice_sequence_scope is InvoiceSequenceScope.ORGANIZATION:
        key = f"org/{organization_id}"
    else:
        key = "platform"
    if _uses_year(settings.invoice_number_template):
        key = f"{key}/{_year(at)}"
    return key


def format_invoice_number(settings: Settings, *, seq: int, at: datetime) -> str:
    """The number `seq` of its series, as the template writes it (`INV-2026-0001`)."""
    number = settings.invoice_number_template.format(
        prefix=settings.invoice_prefix, year=_year(at), seq=seq
    )
    if len(number) > INVOICE_NUMBER_MAX_LENGTH:
        raise ConfigurationError(
            f"invalid setting SAASCORE_INVOICE_NUMBER_TEMPLATE: invoice number {number!r} "
            f"exceeds {INVOICE_NUMBER_MAX_LENGTH} characters"
        )
    return number


async def next_in_series(session: AsyncSession, series: str) -> int:
    """Take the next number of `series` (1 for a new one) inside the session's transaction.

    The counter row stays locked until that transaction commits (the number is used) or rolls
    back (the number returns to the series).
    """
    insert = sql.insert(session, InvoiceSequence)
    statement = (
        insert.values(series=series, last_number=1, updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=[InvoiceSequence.series],
            set_={
                "last_number": InvoiceSequence.last_number + 1,
                "updated_at": insert.excluded.updated_at,
            },
        )
        .returning(InvoiceSequence.last_number)
    )
    number: int = (await session.execute(statement)).scalar_one()
    return number


async def allocate_in_series(session: AsyncSession, series: str, count: int) -> list[int]:
    """Take the next `count` numbers of `series` at once, in one statement (`last_number +
    count`), inside the session's transaction: consecutive, and locked like `next_in_series`'s
    until the transaction ends (a rollback gives them all back)."""
    if count < 1:
        raise ValueError(f"count must be positive, not {count}")
    insert = sql.insert(session, InvoiceSequence)
    statement = (
        insert.values(series=series, last_number=count, updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=[InvoiceSequence.series],
            set_={
                "last_number": InvoiceSequence.last_number + count,
                "updated_at": insert.excluded.updated_at,
            },
        )
        .returning(InvoiceSequence.last_number)
    )
    last: int = (await session.execute(statement)).scalar_one()
    return list(range(last - count + 1, last + 1))


async def allocate_invoice_number(
    session: AsyncSession, *, organization_id: uuid.UUID, at: datetime, settings: Settings
) -> str:
    """The number of an invoice of `organization_id` finalised at `at`, taken from its series
    in the session's transaction. Call it last before the commit: the series is locked until
    then."""
    series = series_key(settings, organization_id=organization_id, at=at)
    seq = await next_in_series(session, series)
    return format_invoice_number(settings, seq=seq, at=at)
