"""Coupons, their redemptions and the credit-pack catalog.

- `coupons` (global): a percentage in basis points or a fixed amount in one currency
  (`one_kind_of_discount`), a duration (once, repeating N periods, forever), an optional
  redemption limit kept exact by `redemptions_within_limit`, an expiry and an active flag.
- `coupon_redemptions` (tenant): an organisation's use of a coupon on a subscription or a
  draft invoice; one per (organisation, coupon, subscription) and per invoice.
- `credit_packs` (global): credits for a price.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-13 11:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "coupons",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("percent_off", sa.Integer(), nullable=True),
        sa.Column("amount_off", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("duration", sa.String(length=32), nullable=False),
        sa.Column("duration_periods", sa.Integer(), nullable=True),
        sa.Column("max_redemptions", sa.Integer(), nullable=True),
        sa.Column("times_redeemed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "(percent_off IS NOT NULL AND amount_off IS NULL AND currency IS NULL) OR "
            "(percent_off IS NULL AND amount_off IS NOT NULL AND currency IS NOT NULL)",
            name=op.f("ck_coupons_one_kind_of_discount"),
        ),
        sa.CheckConstraint(
            "percent_off IS NULL OR percent_off BETWEEN 1 AND 10000",
            name=op.f("ck_coupons_percent_off_range"),
        ),
        sa.CheckConstraint(
            "amount_off IS NULL OR amount_off > 0", name=op.f("ck_coupons_amount_off_positive")
        ),
        sa.CheckConstraint(
            "(duration = 'repeating' AND duration_periods >= 1) OR "
            "(duration <> 'repeating' AND duration_periods IS NULL)",
            name=op.f("ck_coupons_duration_periods_for_repeating"),
        ),
        sa.CheckConstraint(
            "max_redemptions IS NULL OR max_redemptions >= 1",
            name=op.f("ck_coupons_max_redemptions_positive"),
        ),
        sa.CheckConstraint(
            "times_redeemed >= 0 AND (max_redemptions IS NULL OR "
            "times_redeemed <= max_redemptions)",
            name=op.f("ck_coupons_redemptions_within_limit"),
        ),
        sa.CheckConstraint(
            "duration IN ('once', 'repeating', 'forever')", name=op.f("ck_coupons_duration")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_coupons_code")),
    )
    op.create_table(
        "coupon_redemptions",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("coupon_id", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("invoice_id", sa.Uuid(), nullable=True),
        sa.Column("periods_used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(subscription_id IS NULL) <> (invoice_id IS NULL)",
            name=op.f("ck_coupon_redemptions_one_target"),
        ),
        sa.CheckConstraint(
            "periods_used >= 0", name=op.f("ck_coupon_redemptions_periods_used_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["coupon_id"],
            ["coupons.id"],
            name=op.f("fk_coupon_redemptions_coupon_id_coupons"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_coupon_redemptions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"],
            ["subscriptions.organization_id", "subscriptions.id"],
            name=op.f("fk_coupon_redemptions_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "invoice_id"],
            ["invoices.organization_id", "invoices.id"],
            name=op.f("fk_coupon_redemptions_invoice_id_invoices"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_coupon_redemptions")),
        sa.UniqueConstraint(
            "organization_id",
            "coupon_id",
            "subscription_id",
            name=op.f("uq_coupon_redemptions_organization_id_coupon_id_subscription_id"),
        ),
        sa.UniqueConstraint(
            "organization_id",
            "coupon_id",
            "invoice_id",
            name=op.f("uq_coupon_redemptions_organization_id_coupon_id_invoice_id"),
        ),
    )
    op.create_index(
        "ix_coupon_redemptions_coupon_id", "coupon_redemptions", ["coupon_id"], unique=False
    )
    op.create_table(
        "credit_packs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_packs_credits_positive")),
        sa.CheckConstraint("price > 0", name=op.f("ck_credit_packs_price_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_packs")),
        sa.UniqueConstraint("code", name=op.f("uq_credit_packs_code")),
    )


def downgrade() -> None:
    op.drop_table("credit_packs")
    op.drop_index("ix_coupon_redemptions_coupon_id", table_name="coupon_redemptions")
    op.drop_table("coupon_redemptions")
    op.drop_table("coupons")
