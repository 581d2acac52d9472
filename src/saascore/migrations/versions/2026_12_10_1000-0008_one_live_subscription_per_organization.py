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

LIVE = "status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused', 'incomplete', 'suspended')"


def upgrade() -> None:
    duplicated = op.get_bind().scalar(
        sa.text(
            f"SELECT count(*) FROM (SELECT organization_id FROM subscriptions WHERE {LIVE} "
            "GROUP BY organization_id HAVING count(*) > 1) AS duplicated"
        )
    )
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
