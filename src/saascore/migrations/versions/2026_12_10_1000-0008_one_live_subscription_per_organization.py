"""One live subscription per organisation: a partial unique index on subscriptions.

A subscription is live while it is trialing, active, past_due, unpaid, paused, incomplete or
suspended; canceled, expired and incomplete_expired ones are history, any number of them.
The database refuses a second live subscription however two requests race to make it.
Invoice numbers stay unique per organisation (`uq_invoices_organization_id_number`, since
0001): with the platform scope the series never repeats a number anyway, and a unique key
that leads with `organization_id` is what a table distributed by it (Citus) can enforce.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_STATUSES = ("trialing", "active", "past_due", "unpaid", "paused", "incomplete", "suspended")
LIVE = "status IN (" + ", ".join(f"'{status}'" for status in LIVE_STATUSES) + ")"


def upgrade() -> None:
    subscriptions = sa.table("subscriptions", sa.column("organization_id"), sa.column("status"))
    organizations = (
        sa.select(subscriptions.c.organization_id)
        .where(subscriptions.c.status.in_(LIVE_STATUSES))
        .group_by(subscriptions.c.organization_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    duplicated = op.get_bind().scalar(sa.select(sa.func.count()).select_from(organizations))
    if duplicated:
        raise RuntimeError(
            f"{duplicated} organisation(s) have more than one live subscription: cancel or "
            "expire all but one of each, then upgrade again"
        )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_subscriptions_live_organization_id",
            ["organization_id"],
            unique=True,
            postgresql_where=sa.text(LIVE),
            sqlite_where=sa.text(LIVE),
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("uq_subscriptions_live_organization_id")
