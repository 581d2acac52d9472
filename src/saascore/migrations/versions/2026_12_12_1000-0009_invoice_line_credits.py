"""Invoice lines may be credits: a negative amount, such as a proration's unused time.

An upgrade of a subscription records, on its upcoming invoice, a credit for the old plan's
unused time beside the charge of the new plan. The credit is a line of its own with a negative
amount (and unit amount), so that the invoice's subtotal stays the sum of its lines. The
invoice's totals keep their own CHECKs: an upgrade's charge is never below its credit.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = ("amount", "unit_amount")


def upgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        for column in CHECKS:
            batch_op.drop_constraint(op.f(f"ck_invoice_lines_{column}_non_negative"), type_="check")


def downgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        for column in CHECKS:
            batch_op.create_check_constraint(
                op.f(f"ck_invoice_lines_{column}_non_negative"), sa.text(f"{column} >= 0")
            )
