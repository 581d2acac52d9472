"""Who set an organisation's tax rate: its country's default, or an operator.

- `organizations.tax_rate_source`: 'country' (the default rate of its country, applied when
  the country is set or changes) or 'operator' (set by `InvoiceService.set_tax_rate`, which a
  later change of country leaves alone). Existing organisations with a non-zero rate had it
  set by an operator (0010 had no other way); the others follow their country from now on.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-14 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tax_rate_source",
                sa.String(length=16),
                server_default=sa.text("'country'"),
                nullable=False,
            )
        )
        batch_op.create_check_constraint(
            op.f("ck_organizations_tax_rate_source_known"),
            "tax_rate_source IN ('country', 'operator')",
        )
    organizations = sa.table(
        "organizations",
        sa.column("tax_rate_bps", sa.Integer()),
        sa.column("tax_rate_source", sa.String()),
    )
    op.execute(
        organizations.update()
        .where(organizations.c.tax_rate_bps != 0)
        .values(tax_rate_source="operator")
    )


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_organizations_tax_rate_source_known"), type_="check")
        batch_op.drop_column("tax_rate_source")
