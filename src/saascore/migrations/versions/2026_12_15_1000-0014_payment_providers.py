"""Payment providers: credit packs' provider ids, the last provider time applied to a
subscription, and the parsed event kept beside a webhook's body.

- `credit_packs.stripe_price_id`, `credit_packs.lemon_squeezy_variant_id`: the pack's price
  at each provider (unique, nullable), as `plan_prices` has them for plans.
- `subscriptions.provider_updated_at`: the provider's own time of the last snapshot applied,
  so an older one delivered late is stored and ignored.
- `webhook_events.parsed`: the event as saascore parsed it from the verified body, so that
  `saascore webhooks replay` re-applies it without the signature.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-15 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from saascore.kit.types import JSONType

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credit_packs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stripe_price_id", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("lemon_squeezy_variant_id", sa.String(length=255), nullable=True)
        )
        batch_op.create_unique_constraint(
            op.f("uq_credit_packs_stripe_price_id"), ["stripe_price_id"]
        )
        batch_op.create_unique_constraint(
            op.f("uq_credit_packs_lemon_squeezy_variant_id"), ["lemon_squeezy_variant_id"]
        )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("provider_updated_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parsed", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_column("parsed")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("provider_updated_at")
    with op.batch_alter_table("credit_packs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_credit_packs_lemon_squeezy_variant_id"), type_="unique")
        batch_op.drop_constraint(op.f("uq_credit_packs_stripe_price_id"), type_="unique")
        batch_op.drop_column("lemon_squeezy_variant_id")
        batch_op.drop_column("stripe_price_id")
