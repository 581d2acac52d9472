"""Audit entries keep `request_data` and `details` as the canonical JSON text their hash covers.

JSONB rewrites numbers (`-0.0` becomes `0`, `1e308` a 309-digit integer), so an entry whose
details held such a number no longer matched its hash although nobody had touched it. The two
columns become text holding `canonical_json` of the value, which is exactly what the hash
reads. Existing rows get the canonical text of the value they hold, which is the value their
hash was checked against until now: chains that verified before still verify.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:10:00.000000+00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("request_data", "details")
_CHUNK = 1_000


def _canonical(text: str | None) -> str:
    """What `saascore.kit.validation.canonical_json` writes (copied: a migration must not
    change when the package does)."""
    value = json.loads(text) if text is not None else {}
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rewrite() -> None:
    """Every entry's two texts made canonical, a chunk at a time, in key order."""
    bind = op.get_bind()
    table = sa.table(
        "audit_logs",
        sa.column("organization_id", sa.Uuid()),
        sa.column("id", sa.Uuid()),
        *(sa.column(name, sa.Text()) for name in _COLUMNS),
    )
    after: tuple[object, object] | None = None
    while True:
        query = (
            sa.select(table.c.organization_id, table.c.id, *(table.c[n] for n in _COLUMNS))
            .order_by(table.c.organization_id, table.c.id)
            .limit(_CHUNK)
        )
        if after is not None:
            query = query.where(sa.tuple_(table.c.organization_id, table.c.id) > sa.tuple_(*after))
        rows = bind.execute(query).all()
        changed = [
            {"o": org, "i": id_, "r": _canonical(request_data), "d": _canonical(details)}
            for org, id_, request_data, details in rows
            if (request_data, details) != (_canonical(request_data), _canonical(details))
        ]
        if changed:
            bind.execute(
                table.update()
                .where(
                    table.c.organization_id == sa.bindparam("o"),
                    table.c.id == sa.bindparam("i"),
                )
                .values(request_data=sa.bindparam("r"), details=sa.bindparam("d")),
                changed,
            )
        if len(rows) < _CHUNK:
            break
        after = (rows[-1][0], rows[-1][1])


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '10s'")
        for name in _COLUMNS:
            op.alter_column(
                "audit_logs",
                name,
                type_=sa.Text(),
                existing_type=postgresql.JSONB(astext_type=sa.Text()),
                existing_nullable=False,
                postgresql_using=f"{name}::text",
            )
    else:
        with op.batch_alter_table("audit_logs") as batch_op:
            for name in _COLUMNS:
                batch_op.alter_column(
                    name, type_=sa.Text(), existing_type=sa.JSON(), existing_nullable=False
                )
    _rewrite()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _COLUMNS:
            op.alter_column(
                "audit_logs",
                name,
                type_=postgresql.JSONB(astext_type=sa.Text()),
                existing_type=sa.Text(),
                existing_nullable=False,
                postgresql_using=f"{name}::jsonb",
            )
    else:
        with op.batch_alter_table("audit_logs") as batch_op:
            for name in _COLUMNS:
                batch_op.alter_column(
                    name, type_=sa.JSON(), existing_type=sa.Text(), existing_nullable=False
                )
