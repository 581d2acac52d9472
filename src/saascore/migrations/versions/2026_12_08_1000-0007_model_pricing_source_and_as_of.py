"""model_pricing.source and model_pricing.as_of: where a price was taken, and when.

Prices change; a price list names the page each price was read from and the day it was read,
and `saascore pricing list` shows both.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_pricing", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("as_of", sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_pricing", schema=None) as batch_op:
        batch_op.drop_column("as_of")
        batch_op.drop_column("source")
