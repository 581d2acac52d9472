"""Overage prices on a plan's limits, for the billing run's usage lines.

- `plan_limits.overage_prices`: per ISO 4217 currency, minor units per `overage_per` units of
  the meter above the limit (the plan's included amount); empty: no overage is billed.
- `plan_limits.overage_per`: how many units that price is for (at least 1).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-14 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from saascore.kit.types import JSONType

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("plan_limits", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("overage_prices", JSONType, server_default=sa.text("'{}'"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("overage_per", sa.BigInteger(), server_default=sa.text("1"), nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_plan_limits_overage_per_positive"), "overage_per >= 1"
        )


def downgrade() -> None:
    with op.batch_alter_table("plan_limits", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_plan_limits_overage_per_positive"), type_="check")
        batch_op.drop_column("overage_per")
        batch_op.drop_column("overage_prices")
