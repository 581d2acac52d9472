"""Invoice tax and totals that always reconcile.

- `organizations.tax_rate_bps`: the organisation's tax rate in basis points (0 to 100 000),
  set by an operator; `invoices.tax_rate_bps` records the rate an invoice was computed at.
- `invoice_lines.discount_amount` and `tax_amount`: each line's discount and tax, rounded
  once per line; the invoice's totals are their sums.
- A draft's totals may be negative while it is built (credit lines, which 0009 allows), but
  an issued invoice's may not (`issued_totals_non_negative`).
- `amount_due = total - amount_paid` (`due_adds_up`): with `amount_due >= 0` once issued, an
  invoice is never paid above its total.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12 11:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ISSUED_NON_NEGATIVE = (
    "status = 'draft' OR (subtotal >= 0 AND tax_amount >= 0 AND total >= 0 AND amount_due >= 0)"
)


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tax_rate_bps", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_organizations_tax_rate_bps_range"), "tax_rate_bps BETWEEN 0 AND 100000"
        )
    # A draft invoice computed before this revision may not reconcile; recompute what is due.
    invoices = sa.table(
        "invoices",
        sa.column("total", sa.BigInteger()),
        sa.column("amount_paid", sa.BigInteger()),
        sa.column("amount_due", sa.BigInteger()),
    )
    op.execute(
        invoices.update()
        .where(invoices.c.amount_due != invoices.c.total - invoices.c.amount_paid)
        .where(invoices.c.total >= invoices.c.amount_paid)
        .values(amount_due=invoices.c.total - invoices.c.amount_paid)
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tax_rate_bps", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.drop_constraint(op.f("ck_invoices_subtotal_non_negative"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_tax_amount_non_negative"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_total_non_negative"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_amount_due_non_negative"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_invoices_tax_rate_bps_non_negative"), "tax_rate_bps >= 0"
        )
        batch_op.create_check_constraint(
            op.f("ck_invoices_due_adds_up"), "amount_due = total - amount_paid"
        )
        batch_op.create_check_constraint(
            op.f("ck_invoices_issued_totals_non_negative"), ISSUED_NON_NEGATIVE
        )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "discount_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("tax_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_column("tax_amount")
        batch_op.drop_column("discount_amount")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_invoices_issued_totals_non_negative"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_due_adds_up"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_tax_rate_bps_non_negative"), type_="check")
        batch_op.create_check_constraint(op.f("ck_invoices_subtotal_non_negative"), "subtotal >= 0")
        batch_op.create_check_constraint(
            op.f("ck_invoices_tax_amount_non_negative"), "tax_amount >= 0"
        )
        batch_op.create_check_constraint(op.f("ck_invoices_total_non_negative"), "total >= 0")
        batch_op.create_check_constraint(
            op.f("ck_invoices_amount_due_non_negative"), "amount_due >= 0"
        )
        batch_op.drop_column("tax_rate_bps")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_organizations_tax_rate_bps_range"), type_="check")
        batch_op.drop_column("tax_rate_bps")
