"""saascore_limit_exceeded(): how one-statement usage records refuse on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:10:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE = """
CREATE OR REPLACE FUNCTION saascore_limit_exceeded(metric text, limit_value bigint)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'limit exceeded on %', metric
        USING ERRCODE = 'SC001', DETAIL = coalesce(limit_value::text, '');
END
$$
"""


def upgrade() -> None:
    # Raising aborts the whole statement that calls it, so a refused record writes nothing.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS saascore_limit_exceeded(text, bigint)")
