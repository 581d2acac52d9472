"""The initial schema: every table of the seeds, unified.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 00:57:59.274669+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invoice_sequences",
        sa.Column("series", sa.String(length=50), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "last_number >= 0", name=op.f("ck_invoice_sequences_last_number_non_negative")
        ),
        sa.PrimaryKeyConstraint("series", name=op.f("pk_invoice_sequences")),
    )
    op.create_table(
        "meters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "aggregation",
            sa.Enum(
                "sum",
                "count",
                "max",
                name="aggregation",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("unit", sa.String(length=50), nullable=False),
        sa.Column(
            "reset_period",
            sa.Enum(
                "month",
                "day",
                "none",
                name="reset_period",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meters")),
        sa.UniqueConstraint("code", name=op.f("uq_meters_code")),
    )
    op.create_table(
        "model_pricing",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("input_micros_per_million", sa.BigInteger(), nullable=False),
        sa.Column("output_micros_per_million", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_micros_per_million", sa.BigInteger(), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "cached_input_micros_per_million >= 0",
            name=op.f("ck_model_pricing_cached_input_micros_per_million_non_negative"),
        ),
        sa.CheckConstraint(
            "input_micros_per_million >= 0",
            name=op.f("ck_model_pricing_input_micros_per_million_non_negative"),
        ),
        sa.CheckConstraint(
            "output_micros_per_million >= 0",
            name=op.f("ck_model_pricing_output_micros_per_million_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_pricing")),
        sa.UniqueConstraint(
            "provider",
            "model",
            "effective_from",
            name=op.f("uq_model_pricing_provider_model_effective_from"),
        ),
    )
    with op.batch_alter_table("model_pricing", schema=None) as batch_op:
        batch_op.create_index(
            "ix_model_pricing_model_effective_from", ["model", "effective_from"], unique=False
        )

    op.create_table(
        "subscription_plans",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("monthly_token_limit", sa.BigInteger(), nullable=True),
        sa.Column("max_storage_mb", sa.BigInteger(), nullable=True),
        sa.Column("max_api_calls_per_day", sa.BigInteger(), nullable=True),
        sa.Column("max_products_per_batch", sa.Integer(), nullable=True),
        sa.Column("max_items", sa.Integer(), nullable=True),
        sa.Column("max_secondary", sa.Integer(), nullable=True),
        sa.Column("max_users", sa.Integer(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("requests_per_hour", sa.Integer(), nullable=True),
        sa.Column("credits_per_period", sa.BigInteger(), nullable=False),
        sa.Column("credits_rollover", sa.Boolean(), nullable=False),
        sa.Column("api_access", sa.Boolean(), nullable=False),
        sa.Column("trial_days", sa.Integer(), nullable=False),
        sa.Column(
            "features",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "credits_per_period >= 0",
            name=op.f("ck_subscription_plans_credits_per_period_non_negative"),
        ),
        sa.CheckConstraint(
            "max_api_calls_per_day >= 0",
            name=op.f("ck_subscription_plans_max_api_calls_per_day_non_negative"),
        ),
        sa.CheckConstraint(
            "max_items >= 0", name=op.f("ck_subscription_plans_max_items_non_negative")
        ),
        sa.CheckConstraint(
            "max_products_per_batch >= 0",
            name=op.f("ck_subscription_plans_max_products_per_batch_non_negative"),
        ),
        sa.CheckConstraint(
            "max_secondary >= 0", name=op.f("ck_subscription_plans_max_secondary_non_negative")
        ),
        sa.CheckConstraint(
            "max_storage_mb >= 0", name=op.f("ck_subscription_plans_max_storage_mb_non_negative")
        ),
        sa.CheckConstraint(
            "max_users >= 0", name=op.f("ck_subscription_plans_max_users_non_negative")
        ),
        sa.CheckConstraint(
            "monthly_token_limit >= 0",
            name=op.f("ck_subscription_plans_monthly_token_limit_non_negative"),
        ),
        sa.CheckConstraint(
            "requests_per_hour >= 0",
            name=op.f("ck_subscription_plans_requests_per_hour_non_negative"),
        ),
        sa.CheckConstraint(
            "requests_per_minute >= 0",
            name=op.f("ck_subscription_plans_requests_per_minute_non_negative"),
        ),
        sa.CheckConstraint(
            "trial_days >= 0", name=op.f("ck_subscription_plans_trial_days_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_plans")),
        sa.UniqueConstraint("code", name=op.f("uq_subscription_plans_code")),
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "suspended",
                "deleted",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "subscription_status",
            sa.Enum(
                "trialing",
                "active",
                "past_due",
                "unpaid",
                "paused",
                "incomplete",
                "incomplete_expired",
                "suspended",
                "canceled",
                "expired",
                name="subscription_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("billing_email", sa.String(length=320), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("locale", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "billing_provider",
            sa.Enum(
                "mock",
                "stripe",
                "lemon_squeezy",
                "tharwatt",
                "manual",
                name="billing_provider",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("provider_customer_id", sa.String(length=255), nullable=True),
        sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_organizations_currency_iso")),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["subscription_plans.id"],
            name=op.f("fk_organizations_plan_id_subscription_plans"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint(
            "billing_provider",
            "provider_customer_id",
            name=op.f("uq_organizations_billing_provider_provider_customer_id"),
        ),
        sa.UniqueConstraint("external_id", name=op.f("uq_organizations_external_id")),
        sa.UniqueConstraint("slug", name=op.f("uq_organizations_slug")),
    )
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_organizations_domain"), ["domain"], unique=False)
        batch_op.create_index(batch_op.f("ix_organizations_plan_id"), ["plan_id"], unique=False)

    op.create_table(
        "plan_limits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=True),
        sa.Column("is_hard", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "limit_value >= 0", name=op.f("ck_plan_limits_limit_value_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["subscription_plans.id"],
            name=op.f("fk_plan_limits_plan_id_subscription_plans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_limits")),
        sa.UniqueConstraint("plan_id", "metric", name=op.f("uq_plan_limits_plan_id_metric")),
    )
    op.create_table(
        "plan_prices",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column(
            "billing_cycle",
            sa.Enum(
                "monthly",
                "quarterly",
                "yearly",
                name="billing_cycle",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_product_id", sa.String(length=255), nullable=True),
        sa.Column("lemon_squeezy_variant_id", sa.String(length=255), nullable=True),
        sa.Column("lemon_squeezy_product_id", sa.String(length=255), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_plan_prices_amount_non_negative")),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_plan_prices_currency_iso")),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["subscription_plans.id"],
            name=op.f("fk_plan_prices_plan_id_subscription_plans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_prices")),
        sa.UniqueConstraint(
            "lemon_squeezy_variant_id", name=op.f("uq_plan_prices_lemon_squeezy_variant_id")
        ),
        sa.UniqueConstraint(
            "plan_id",
            "billing_cycle",
            "currency",
            name=op.f("uq_plan_prices_plan_id_billing_cycle_currency"),
        ),
        sa.UniqueConstraint("stripe_price_id", name=op.f("uq_plan_prices_stripe_price_id")),
    )
    op.create_table(
        "audit_logs",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("actor_type", sa.String(length=32), nullable=False),
        sa.Column("actor_id", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target_type", sa.String(length=100), nullable=True),
        sa.Column("target_id", sa.String(length=255), nullable=True),
        sa.Column("processing_job_id", sa.Uuid(), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column(
            "request_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_logs_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_audit_logs")),
        sa.UniqueConstraint(
            "organization_id", "seq", name=op.f("uq_audit_logs_organization_id_seq")
        ),
    )
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_logs_organization_id_action", ["organization_id", "action"], unique=False
        )
        batch_op.create_index(
            "ix_audit_logs_organization_id_created_at",
            ["organization_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_audit_logs_organization_id_processing_job_id",
            ["organization_id", "processing_job_id"],
            unique=False,
        )

    op.create_table(
        "file_search_stores",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("provider_store_id", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("document_count", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "document_count >= 0", name=op.f("ck_file_search_stores_document_count_non_negative")
        ),
        sa.CheckConstraint(
            "size_bytes >= 0", name=op.f("ck_file_search_stores_size_bytes_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_file_search_stores_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_file_search_stores")),
        sa.UniqueConstraint("organization_id", name=op.f("uq_file_search_stores_organization_id")),
    )
    op.create_table(
        "folders",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "parent_id"],
            ["folders.organization_id", "folders.id"],
            name=op.f("fk_folders_parent_id_folders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_folders_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_folders")),
    )
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_folders_organization_id_parent_id", ["organization_id", "parent_id"], unique=False
        )

    op.create_table(
        "memory_entries",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("namespace", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_memory_entries_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_memory_entries")),
        sa.UniqueConstraint(
            "organization_id",
            "namespace",
            "key",
            name=op.f("uq_memory_entries_organization_id_namespace_key"),
        ),
    )
    with op.batch_alter_table("memory_entries", schema=None) as batch_op:
        batch_op.create_index("ix_memory_entries_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "trialing",
                "active",
                "past_due",
                "unpaid",
                "paused",
                "incomplete",
                "incomplete_expired",
                "suspended",
                "canceled",
                "expired",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "billing_cycle",
            sa.Enum(
                "monthly",
                "quarterly",
                "yearly",
                name="billing_cycle",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column(
            "payment_method",
            sa.Enum(
                "credit_card",
                "bank_transfer",
                "mobile_money",
                "cash",
                "wallet",
                "credits",
                "other",
                name="payment_method",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_billing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trial_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trial_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "provider",
            sa.Enum(
                "mock",
                "stripe",
                "lemon_squeezy",
                "tharwatt",
                "manual",
                name="provider",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("provider_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("provider_customer_id", sa.String(length=255), nullable=True),
        sa.Column("provider_price_id", sa.String(length=255), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "current_period_end >= current_period_start", name=op.f("ck_subscriptions_period_order")
        ),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_subscriptions_quantity_non_negative")),
        sa.CheckConstraint(
            "unit_amount >= 0", name=op.f("ck_subscriptions_unit_amount_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_subscriptions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["subscription_plans.id"],
            name=op.f("fk_subscriptions_plan_id_subscription_plans"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint(
            "organization_id",
            "provider",
            "provider_subscription_id",
            name="uq_subscriptions_provider_subscription_id",
        ),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "idx_subscription_next_billing", ["next_billing_at", "status"], unique=False
        )
        batch_op.create_index(
            "idx_subscription_tenant_status", ["organization_id", "status"], unique=False
        )
        batch_op.create_index("ix_subscriptions_plan_id", ["plan_id"], unique=False)
        batch_op.create_index(
            "ix_subscriptions_provider_subscription_id",
            ["provider", "provider_subscription_id"],
            unique=False,
        )

    op.create_table(
        "usage_alerts",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold_percent", sa.Integer(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column(
            "crossed_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "threshold_percent > 0", name=op.f("ck_usage_alerts_threshold_positive")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_alerts_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_alerts")),
        sa.UniqueConstraint(
            "organization_id",
            "metric",
            "period_start",
            "threshold_percent",
            name="uq_usage_alerts_period_threshold",
        ),
    )
    op.create_table(
        "usage_counters",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_usage_counters_reserved_non_negative")),
        sa.CheckConstraint("used >= 0", name=op.f("ck_usage_counters_used_non_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_counters_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_counters")),
        sa.UniqueConstraint(
            "organization_id",
            "metric",
            "period_start",
            name=op.f("uq_usage_counters_organization_id_metric_period_start"),
        ),
    )
    op.create_table(
        "usage_daily_summary",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("feature", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "cached_tokens >= 0", name=op.f("ck_usage_daily_summary_cached_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "cost_micros >= 0", name=op.f("ck_usage_daily_summary_cost_micros_non_negative")
        ),
        sa.CheckConstraint(
            "event_count >= 0", name=op.f("ck_usage_daily_summary_event_count_non_negative")
        ),
        sa.CheckConstraint(
            "input_tokens >= 0", name=op.f("ck_usage_daily_summary_input_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "output_tokens >= 0", name=op.f("ck_usage_daily_summary_output_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "quantity >= 0", name=op.f("ck_usage_daily_summary_quantity_non_negative")
        ),
        sa.CheckConstraint(
            "total_tokens >= 0", name=op.f("ck_usage_daily_summary_total_tokens_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_daily_summary_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_daily_summary")),
        sa.UniqueConstraint(
            "organization_id",
            "day",
            "metric",
            "model",
            "provider",
            "feature",
            name="uq_usage_daily_summary_rollup_key",
        ),
    )
    op.create_table(
        "usage_limits",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "overrides",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("storage_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("credit_balance", sa.BigInteger(), nullable=False),
        sa.Column("credits_granted_total", sa.BigInteger(), nullable=False),
        sa.Column("credits_consumed_total", sa.BigInteger(), nullable=False),
        sa.Column("credits_expired_total", sa.BigInteger(), nullable=False),
        sa.Column("last_credit_refill_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_credit_refill_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "credit_balance >= 0", name=op.f("ck_usage_limits_credit_balance_non_negative")
        ),
        sa.CheckConstraint(
            "credits_consumed_total >= 0",
            name=op.f("ck_usage_limits_credits_consumed_total_non_negative"),
        ),
        sa.CheckConstraint(
            "credits_expired_total >= 0",
            name=op.f("ck_usage_limits_credits_expired_total_non_negative"),
        ),
        sa.CheckConstraint(
            "credits_granted_total >= 0",
            name=op.f("ck_usage_limits_credits_granted_total_non_negative"),
        ),
        sa.CheckConstraint(
            "storage_used_bytes >= 0", name=op.f("ck_usage_limits_storage_used_bytes_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_limits_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_limits")),
        sa.UniqueConstraint("organization_id", name=op.f("uq_usage_limits_organization_id")),
    )
    op.create_table(
        "usage_reservations",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("settled_quantity", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "held",
                "settled",
                "released",
                "expired",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "quantity >= 0", name=op.f("ck_usage_reservations_quantity_non_negative")
        ),
        sa.CheckConstraint(
            "settled_quantity >= 0",
            name=op.f("ck_usage_reservations_settled_quantity_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_reservations_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_reservations")),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name=op.f("uq_usage_reservations_organization_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("usage_reservations", schema=None) as batch_op:
        batch_op.create_index("ix_usage_reservations_id", ["id"], unique=False)
        batch_op.create_index(
            "ix_usage_reservations_status_expires_at", ["status", "expires_at"], unique=False
        )

    op.create_table(
        "users",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("full_name", sa.String(length=255), nullable=True),
        sa.Column(
            "role",
            sa.Enum(
                "owner",
                "admin",
                "member",
                "viewer",
                name="role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("external_platform", sa.String(length=50), nullable=True),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("external_store_id", sa.String(length=255), nullable=True),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_users_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_users")),
        sa.UniqueConstraint(
            "organization_id", "email", name=op.f("uq_users_organization_id_email")
        ),
        sa.UniqueConstraint(
            "organization_id",
            "external_platform",
            "external_id",
            name=op.f("uq_users_organization_id_external_platform_external_id"),
        ),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_email", ["email"], unique=False)

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "provider",
            sa.Enum(
                "mock",
                "stripe",
                "lemon_squeezy",
                "tharwatt",
                "manual",
                name="provider",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "outcome",
            sa.Enum(
                "received",
                "processed",
                "ignored",
                "failed",
                name="outcome",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_webhook_events_organization_id_organizations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint(
            "provider", "event_id", name=op.f("uq_webhook_events_provider_event_id")
        ),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_events_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "api_keys",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("key_prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "environment",
            sa.Enum(
                "live",
                "test",
                name="environment",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "scopes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_api_keys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_keys_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("ix_api_keys_key_hash", ["key_hash"], unique=False)
        batch_op.create_index(
            "ix_api_keys_organization_id_user_id", ["organization_id", "user_id"], unique=False
        )

    op.create_table(
        "conversation_summaries",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("agent", sa.String(length=100), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column(
            "key_topics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "message_count >= 0", name=op.f("ck_conversation_summaries_message_count_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_conversation_summaries_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_conversation_summaries_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_conversation_summaries")),
    )
    with op.batch_alter_table("conversation_summaries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conversation_summaries_org_user_session",
            ["organization_id", "user_id", "session_id"],
            unique=False,
        )

    op.create_table(
        "document_folders",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("store_id", sa.Uuid(), nullable=False),
        sa.Column("folder_name", sa.String(length=255), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("folder_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "folder_id"],
            ["folders.organization_id", "folders.id"],
            name=op.f("fk_document_folders_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "parent_id"],
            ["document_folders.organization_id", "document_folders.id"],
            name=op.f("fk_document_folders_parent_id_document_folders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "store_id"],
            ["file_search_stores.organization_id", "file_search_stores.id"],
            name=op.f("fk_document_folders_store_id_file_search_stores"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_document_folders_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_document_folders")),
    )
    with op.batch_alter_table("document_folders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_document_folders_organization_id_folder_id",
            ["organization_id", "folder_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_document_folders_organization_id_parent_id",
            ["organization_id", "parent_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_document_folders_organization_id_store_id",
            ["organization_id", "store_id"],
            unique=False,
        )

    op.create_table(
        "documents",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("folder_id", sa.Uuid(), nullable=True),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("original_filename", sa.String(length=512), nullable=True),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_hash", sa.String(length=64), nullable=True),
        sa.Column("storage_uri", sa.Text(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "uploaded",
                "processing",
                "processed",
                "failed",
                "deleted",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("parsed_path", sa.Text(), nullable=True),
        sa.Column("parsed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uploaded_by", sa.Uuid(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_documents_size_bytes_non_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id", "folder_id"],
            ["folders.organization_id", "folders.id"],
            name=op.f("fk_documents_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_documents_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_documents")),
    )
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_documents_organization_id_file_hash", ["organization_id", "file_hash"], unique=False
        )
        batch_op.create_index(
            "ix_documents_organization_id_folder_id", ["organization_id", "folder_id"], unique=False
        )

    op.create_table(
        "invoices",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "draft",
                "open",
                "paid",
                "overdue",
                "void",
                "uncollectible",
                "refunded",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("issue_date", sa.Date(), nullable=True),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("subtotal", sa.BigInteger(), nullable=False),
        sa.Column("discount_amount", sa.BigInteger(), nullable=False),
        sa.Column("tax_amount", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("locale", sa.String(length=16), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column(
            "notes_localized",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "provider",
            sa.Enum(
                "mock",
                "stripe",
                "lemon_squeezy",
                "tharwatt",
                "manual",
                name="provider",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("provider_invoice_id", sa.String(length=255), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("amount_due >= 0", name=op.f("ck_invoices_amount_due_non_negative")),
        sa.CheckConstraint("amount_paid >= 0", name=op.f("ck_invoices_amount_paid_non_negative")),
        sa.CheckConstraint(
            "discount_amount >= 0", name=op.f("ck_invoices_discount_amount_non_negative")
        ),
        sa.CheckConstraint("subtotal >= 0", name=op.f("ck_invoices_subtotal_non_negative")),
        sa.CheckConstraint("tax_amount >= 0", name=op.f("ck_invoices_tax_amount_non_negative")),
        sa.CheckConstraint(
            "total = subtotal - discount_amount + tax_amount",
            name=op.f("ck_invoices_total_adds_up"),
        ),
        sa.CheckConstraint("total >= 0", name=op.f("ck_invoices_total_non_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"],
            ["subscriptions.organization_id", "subscriptions.id"],
            name=op.f("fk_invoices_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_invoices_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_invoices")),
        sa.UniqueConstraint(
            "organization_id", "number", name=op.f("uq_invoices_organization_id_number")
        ),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("idx_invoice_due_date_status", ["due_date", "status"], unique=False)
        batch_op.create_index(
            "idx_invoice_tenant_status", ["organization_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_invoices_organization_id_subscription_id",
            ["organization_id", "subscription_id"],
            unique=False,
        )

    op.create_table(
        "refresh_tokens",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "issued_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by_id", sa.Uuid(), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_refresh_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_refresh_tokens_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_refresh_tokens")),
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            "ix_refresh_tokens_organization_id_family_id",
            ["organization_id", "family_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_refresh_tokens_organization_id_user_id",
            ["organization_id", "user_id"],
            unique=False,
        )
        batch_op.create_index("ix_refresh_tokens_token_hash", ["token_hash"], unique=False)

    op.create_table(
        "usage_events",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("feature", sa.String(length=100), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("provider", sa.String(length=50), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("cost_currency", sa.String(length=3), nullable=False),
        sa.Column("credits_used", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=True),
        sa.Column("batch_id", sa.String(length=255), nullable=True),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column("response_time_ms", sa.Integer(), nullable=True),
        sa.Column(
            "properties",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "cached_tokens >= 0", name=op.f("ck_usage_events_cached_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "cost_micros >= 0", name=op.f("ck_usage_events_cost_micros_non_negative")
        ),
        sa.CheckConstraint(
            "credits_used >= 0", name=op.f("ck_usage_events_credits_used_non_negative")
        ),
        sa.CheckConstraint(
            "input_tokens >= 0", name=op.f("ck_usage_events_input_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "output_tokens >= 0", name=op.f("ck_usage_events_output_tokens_non_negative")
        ),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_usage_events_quantity_non_negative")),
        sa.CheckConstraint(
            "response_time_ms >= 0", name=op.f("ck_usage_events_response_time_ms_non_negative")
        ),
        sa.CheckConstraint(
            "total_tokens >= 0", name=op.f("ck_usage_events_total_tokens_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"],
            ["subscriptions.organization_id", "subscriptions.id"],
            name=op.f("fk_usage_events_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_events_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name=op.f("uq_usage_events_organization_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(
            "idx_usage_subscription_metric",
            ["organization_id", "subscription_id", "metric"],
            unique=False,
        )
        batch_op.create_index(
            "idx_usage_tenant_metric_date",
            ["organization_id", "metric", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_usage_events_organization_id_user_id", ["organization_id", "user_id"], unique=False
        )

    op.create_table(
        "user_preferences",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("default_model", sa.String(length=255), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column(
            "preferences",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_user_preferences_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_user_preferences_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_user_preferences")),
        sa.UniqueConstraint(
            "organization_id", "user_id", name=op.f("uq_user_preferences_organization_id_user_id")
        ),
    )
    op.create_table(
        "document_generations",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column(
            "generation_type",
            sa.Enum(
                "summary",
                "faq",
                "questions",
                "extraction",
                "other",
                name="generation_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("cache_key", sa.String(length=255), nullable=False),
        sa.Column(
            "content",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column(
            "options",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "input_tokens >= 0", name=op.f("ck_document_generations_input_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "output_tokens >= 0", name=op.f("ck_document_generations_output_tokens_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "document_id"],
            ["documents.organization_id", "documents.id"],
            name=op.f("fk_document_generations_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_document_generations_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_document_generations")),
        sa.UniqueConstraint(
            "organization_id",
            "document_id",
            "generation_type",
            "cache_key",
            name="uq_document_generations_cache_key",
        ),
    )
    op.create_table(
        "invoice_lines",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("invoice_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_invoice_lines_amount_non_negative")),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_invoice_lines_quantity_non_negative")),
        sa.CheckConstraint(
            "unit_amount >= 0", name=op.f("ck_invoice_lines_unit_amount_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "invoice_id"],
            ["invoices.organization_id", "invoices.id"],
            name=op.f("fk_invoice_lines_invoice_id_invoices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_invoice_lines_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_invoice_lines")),
    )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_index(
            "ix_invoice_lines_organization_id_invoice_id",
            ["organization_id", "invoice_id"],
            unique=False,
        )

    op.create_table(
        "payments",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("invoice_id", sa.Uuid(), nullable=True),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("plan_id", sa.Uuid(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "processing",
                "succeeded",
                "failed",
                "canceled",
                "refunded",
                "partially_refunded",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "method",
            sa.Enum(
                "credit_card",
                "bank_transfer",
                "mobile_money",
                "cash",
                "wallet",
                "credits",
                "other",
                name="method",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "provider",
            sa.Enum(
                "mock",
                "stripe",
                "lemon_squeezy",
                "tharwatt",
                "manual",
                name="provider",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "transaction_type",
            sa.Enum(
                "subscription",
                "credit_purchase",
                "one_time",
                "refund",
                name="transaction_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("provider_payment_id", sa.String(length=255), nullable=True),
        sa.Column("provider_customer_id", sa.String(length=255), nullable=True),
        sa.Column("provider_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("credits_awarded", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_payments_amount_non_negative")),
        sa.CheckConstraint(
            "credits_awarded >= 0", name=op.f("ck_payments_credits_awarded_non_negative")
        ),
        sa.CheckConstraint(
            "refunded_amount <= amount", name=op.f("ck_payments_refund_within_amount")
        ),
        sa.CheckConstraint(
            "refunded_amount >= 0", name=op.f("ck_payments_refunded_amount_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "invoice_id"],
            ["invoices.organization_id", "invoices.id"],
            name=op.f("fk_payments_invoice_id_invoices"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"],
            ["subscriptions.organization_id", "subscriptions.id"],
            name=op.f("fk_payments_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_payments_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["subscription_plans.id"],
            name=op.f("fk_payments_plan_id_subscription_plans"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_payments")),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name=op.f("uq_payments_organization_id_idempotency_key"),
        ),
        sa.UniqueConstraint(
            "organization_id",
            "provider",
            "provider_payment_id",
            name=op.f("uq_payments_organization_id_provider_provider_payment_id"),
        ),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("idx_payment_created", ["created_at"], unique=False)
        batch_op.create_index(
            "idx_payment_tenant_status", ["organization_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_payments_organization_id_invoice_id",
            ["organization_id", "invoice_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_payments_organization_id_subscription_id",
            ["organization_id", "subscription_id"],
            unique=False,
        )
        batch_op.create_index("ix_payments_plan_id", ["plan_id"], unique=False)
        batch_op.create_index(
            "ix_payments_provider_payment_id", ["provider", "provider_payment_id"], unique=False
        )

    op.create_table(
        "processing_jobs",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=True),
        sa.Column("job_type", sa.String(length=100), nullable=False),
        sa.Column("cache_key", sa.String(length=255), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "running",
                "completed",
                "failed",
                "canceled",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column(
            "options",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "input_tokens >= 0", name=op.f("ck_processing_jobs_input_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "output_tokens >= 0", name=op.f("ck_processing_jobs_output_tokens_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "document_id"],
            ["documents.organization_id", "documents.id"],
            name=op.f("fk_processing_jobs_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_processing_jobs_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_processing_jobs")),
    )
    with op.batch_alter_table("processing_jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_processing_jobs_organization_id_cache_key",
            ["organization_id", "cache_key"],
            unique=False,
        )
        batch_op.create_index(
            "ix_processing_jobs_organization_id_document_id",
            ["organization_id", "document_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_processing_jobs_organization_id_status", ["organization_id", "status"], unique=False
        )

    op.create_table(
        "credit_grants",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column(
            "source",
            sa.Enum(
                "plan",
                "purchase",
                "promotion",
                "refund",
                "manual",
                name="source",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("payment_id", sa.Uuid(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "effective_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_credit_grants_amount_non_negative")),
        sa.CheckConstraint(
            "remaining <= amount", name=op.f("ck_credit_grants_remaining_within_amount")
        ),
        sa.CheckConstraint("remaining >= 0", name=op.f("ck_credit_grants_remaining_non_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id", "payment_id"],
            ["payments.organization_id", "payments.id"],
            name=op.f("fk_credit_grants_payment_id_payments"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_grants_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_credit_grants")),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name=op.f("uq_credit_grants_organization_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_grants_drawable",
            ["organization_id", "priority", "expires_at", "remaining"],
            unique=False,
        )
        batch_op.create_index(
            "ix_credit_grants_organization_id_expires_at",
            ["organization_id", "expires_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_credit_grants_organization_id_payment_id",
            ["organization_id", "payment_id"],
            unique=False,
        )

    op.create_table(
        "credit_transactions",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "type",
            sa.Enum(
                "grant",
                "consume",
                "expire",
                "refund",
                "adjust",
                name="type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=True),
        sa.Column("related_transaction_id", sa.Uuid(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("payload_hash", sa.String(length=64), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "balance_after >= 0", name=op.f("ck_credit_transactions_balance_after_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "grant_id"],
            ["credit_grants.organization_id", "credit_grants.id"],
            name=op.f("fk_credit_transactions_grant_id_credit_grants"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "related_transaction_id"],
            ["credit_transactions.organization_id", "credit_transactions.id"],
            name=op.f("fk_credit_transactions_related_transaction_id_credit_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_transactions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_credit_transactions")),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name=op.f("uq_credit_transactions_organization_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("credit_transactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_transactions_organization_id_created_at",
            ["organization_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_credit_transactions_organization_id_grant_id",
            ["organization_id", "grant_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_credit_transactions_related",
            ["organization_id", "related_transaction_id"],
            unique=False,
        )

    op.create_table(
        "credit_allocations",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "grant_id"],
            ["credit_grants.organization_id", "credit_grants.id"],
            name=op.f("fk_credit_allocations_grant_id_credit_grants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "transaction_id"],
            ["credit_transactions.organization_id", "credit_transactions.id"],
            name=op.f("fk_credit_allocations_transaction_id_credit_transactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_allocations_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_credit_allocations")),
    )
    with op.batch_alter_table("credit_allocations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_allocations_organization_id_grant_id",
            ["organization_id", "grant_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_credit_allocations_organization_id_transaction_id",
            ["organization_id", "transaction_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("credit_allocations", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_allocations_organization_id_transaction_id")
        batch_op.drop_index("ix_credit_allocations_organization_id_grant_id")

    op.drop_table("credit_allocations")
    with op.batch_alter_table("credit_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_transactions_related")
        batch_op.drop_index("ix_credit_transactions_organization_id_grant_id")
        batch_op.drop_index("ix_credit_transactions_organization_id_created_at")

    op.drop_table("credit_transactions")
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_grants_organization_id_payment_id")
        batch_op.drop_index("ix_credit_grants_organization_id_expires_at")
        batch_op.drop_index("ix_credit_grants_drawable")

    op.drop_table("credit_grants")
    with op.batch_alter_table("processing_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_processing_jobs_organization_id_status")
        batch_op.drop_index("ix_processing_jobs_organization_id_document_id")
        batch_op.drop_index("ix_processing_jobs_organization_id_cache_key")

    op.drop_table("processing_jobs")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_provider_payment_id")
        batch_op.drop_index("ix_payments_plan_id")
        batch_op.drop_index("ix_payments_organization_id_subscription_id")
        batch_op.drop_index("ix_payments_organization_id_invoice_id")
        batch_op.drop_index("idx_payment_tenant_status")
        batch_op.drop_index("idx_payment_created")

    op.drop_table("payments")
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_lines_organization_id_invoice_id")

    op.drop_table("invoice_lines")
    op.drop_table("document_generations")
    op.drop_table("user_preferences")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_events_organization_id_user_id")
        batch_op.drop_index("idx_usage_tenant_metric_date")
        batch_op.drop_index("idx_usage_subscription_metric")

    op.drop_table("usage_events")
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_refresh_tokens_token_hash")
        batch_op.drop_index("ix_refresh_tokens_organization_id_user_id")
        batch_op.drop_index("ix_refresh_tokens_organization_id_family_id")

    op.drop_table("refresh_tokens")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_organization_id_subscription_id")
        batch_op.drop_index("idx_invoice_tenant_status")
        batch_op.drop_index("idx_invoice_due_date_status")

    op.drop_table("invoices")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index("ix_documents_organization_id_folder_id")
        batch_op.drop_index("ix_documents_organization_id_file_hash")

    op.drop_table("documents")
    with op.batch_alter_table("document_folders", schema=None) as batch_op:
        batch_op.drop_index("ix_document_folders_organization_id_store_id")
        batch_op.drop_index("ix_document_folders_organization_id_parent_id")
        batch_op.drop_index("ix_document_folders_organization_id_folder_id")

    op.drop_table("document_folders")
    with op.batch_alter_table("conversation_summaries", schema=None) as batch_op:
        batch_op.drop_index("ix_conversation_summaries_org_user_session")

    op.drop_table("conversation_summaries")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_organization_id_user_id")
        batch_op.drop_index("ix_api_keys_key_hash")

    op.drop_table("api_keys")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_organization_id"))

    op.drop_table("webhook_events")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_email")

    op.drop_table("users")
    with op.batch_alter_table("usage_reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_reservations_status_expires_at")
        batch_op.drop_index("ix_usage_reservations_id")

    op.drop_table("usage_reservations")
    op.drop_table("usage_limits")
    op.drop_table("usage_daily_summary")
    op.drop_table("usage_counters")
    op.drop_table("usage_alerts")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_provider_subscription_id")
        batch_op.drop_index("ix_subscriptions_plan_id")
        batch_op.drop_index("idx_subscription_tenant_status")
        batch_op.drop_index("idx_subscription_next_billing")

    op.drop_table("subscriptions")
    with op.batch_alter_table("memory_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_memory_entries_expires_at")

    op.drop_table("memory_entries")
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.drop_index("ix_folders_organization_id_parent_id")

    op.drop_table("folders")
    op.drop_table("file_search_stores")
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_logs_organization_id_processing_job_id")
        batch_op.drop_index("ix_audit_logs_organization_id_created_at")
        batch_op.drop_index("ix_audit_logs_organization_id_action")

    op.drop_table("audit_logs")
    op.drop_table("plan_prices")
    op.drop_table("plan_limits")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_organizations_plan_id"))
        batch_op.drop_index(batch_op.f("ix_organizations_domain"))

    op.drop_table("organizations")
    op.drop_table("subscription_plans")
    with op.batch_alter_table("model_pricing", schema=None) as batch_op:
        batch_op.drop_index("ix_model_pricing_model_effective_from")

    op.drop_table("model_pricing")
    op.drop_table("meters")
    op.drop_table("invoice_sequences")
