"""Tenant safety by construction: the rules every tenant table follows (DESIGN.md, "Principles").

A tenant table is one with an `organization_id` column, other than `organizations` itself and the
documented global tables that merely remember an organisation (`webhook_events`). Each one:

- has `organization_id` as the first primary-key column and `id` as the second;
- has `organization_id` in every unique constraint and unique index;
- reaches other tenant tables only through composite foreign keys that pair its
  `organization_id` with theirs;
- is deleted with its organisation (`organization_id -> organizations.id ON DELETE CASCADE`).
"""

from __future__ import annotations

import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import Base

ORGANIZATION_ID = "organization_id"
#: Tables with an `organization_id` column that are not tenant tables.
NOT_TENANT_TABLES = frozenset({"organizations", "webhook_events"})
#: The documented global tables: the catalog (coupons and credit packs too), invoice series,
#: webhook events, the tenants, and the operators' keys (operators belong to no organisation).
GLOBAL_TABLES = frozenset(
    {
        "organizations",
        "subscription_plans",
        "plan_prices",
        "plan_limits",
        "meters",
        "model_pricing",
        "coupons",
        "credit_packs",
        "invoice_sequences",
        "webhook_events",
        "operator_keys",
    }
)


def tenant_table_names(
    metadata: sa.MetaData, not_tenant: frozenset[str] = NOT_TENANT_TABLES
) -> set[str]:
    return {
        name
        for name, table in metadata.tables.items()
        if ORGANIZATION_ID in table.c and name not in not_tenant
    }


def _unique_keys(table: sa.Table) -> list[tuple[str, list[str]]]:
    keys = [
        (str(constraint.name), [column.name for column in constraint.columns])
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    ]
    keys += [
        (str(index.name), [column.name for column in index.columns])
        for index in table.indexes
        if index.unique
    ]
    # `Column(unique=True)` usually becomes a UniqueConstraint too; report it once.
    covered = {tuple(columns) for _, columns in keys}
    keys += [
        (f"{column.name} (unique=True)", [column.name])
        for column in table.c
        if column.unique and (column.name,) not in covered
    ]
    return keys


def tenant_schema_problems(
    metadata: sa.MetaData, not_tenant: frozenset[str] = NOT_TENANT_TABLES
) -> list[str]:
    """Every way in which `metadata`'s tenant tables break the rules above (empty if none)."""
    tenants = tenant_table_names(metadata, not_tenant)
    problems: list[str] = []
    for name in sorted(tenants):
        table = metadata.tables[name]
        primary_key = [column.name for column in table.primary_key.columns]
        if primary_key[:2] != [ORGANIZATION_ID, "id"]:
            problems.append(
                f"{name}: primary key ({', '.join(primary_key)}) does not start with "
                "(organization_id, id)"
            )
        for key, columns in _unique_keys(table):
            if ORGANIZATION_ID not in columns:
                problems.append(
                    f"{name}: unique {key} ({', '.join(columns)}) lacks organization_id"
                )
        cascades = False
        for fk in table.foreign_key_constraints:
            referred = fk.referred_table.name
            local = [column.name for column in fk.columns]
            if referred == "organizations":
                cascades |= local == [ORGANIZATION_ID] and (fk.ondelete or "").upper() == "CASCADE"
                continue
            if referred not in tenants:
                continue  # a global table (a plan): nothing tenant-owned to leak
            pairs = {element.parent.name: element.column.name for element in fk.elements}
            if pairs.get(ORGANIZATION_ID) != ORGANIZATION_ID:
                problems.append(
                    f"{name}: foreign key ({', '.join(local)}) -> {referred} does not pair "
                    "organization_id with the referred organization_id"
                )
        if not cascades:
            problems.append(
                f"{name}: no foreign key organization_id -> organizations.id ON DELETE CASCADE"
            )
    return problems


class TestModels:
    def test_tenant_tables_follow_the_rules(self) -> None:
        assert tenant_schema_problems(Base.metadata) == []

    def test_every_table_is_tenant_or_documented_global(self) -> None:
        tenants = tenant_table_names(Base.metadata)
        assert set(Base.metadata.tables) - tenants == GLOBAL_TABLES
        assert len(tenants) > 20  # the checker above ran over real tables

    def test_the_global_tables_with_organization_id_are_the_documented_ones(self) -> None:
        with_column = {
            name for name, table in Base.metadata.tables.items() if ORGANIZATION_ID in table.c
        }
        assert with_column & GLOBAL_TABLES == NOT_TENANT_TABLES - {"organizations"}


class TestChecker:
    """The checker reports what it should, so a passing schema test means something."""

    @staticmethod
    def _metadata() -> sa.MetaData:
        metadata = sa.MetaData()
        sa.Table("organizations", metadata, sa.Column("id", sa.Uuid, primary_key=True))
        sa.Table(
            "parents",
            metadata,
            sa.Column(
                ORGANIZATION_ID,
                sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("code", sa.String(10)),
            sa.UniqueConstraint(ORGANIZATION_ID, "code"),
        )
        sa.Table(
            "good_children",
            metadata,
            sa.Column(
                ORGANIZATION_ID,
                sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("parent_id", sa.Uuid),
            sa.ForeignKeyConstraint(
                [ORGANIZATION_ID, "parent_id"], ["parents.organization_id", "parents.id"]
            ),
        )
        sa.Table(
            "bad_children",
            metadata,
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column(ORGANIZATION_ID, sa.ForeignKey("organizations.id"), primary_key=True),
            sa.Column("parent_id", sa.Uuid),
            sa.Column("email", sa.String(50), unique=True),
            sa.Column("slug", sa.String(50)),
            sa.Column("code", sa.String(50)),
            sa.Index("ix_bad_children_slug", "slug", unique=True),
            sa.UniqueConstraint("code", name="uq_bad_children_code"),
            sa.ForeignKeyConstraint(["parent_id"], ["parents.id"]),
        )
        return metadata

    def test_reports_each_broken_rule(self) -> None:
        problems = tenant_schema_problems(self._metadata())
        bad = [problem for problem in problems if problem.startswith("bad_children:")]
        assert len(bad) == len(problems), problems  # parents and good_children are fine
        text = "\n".join(bad)
        assert "primary key (id, organization_id)" in text
        assert "uq_bad_children_code (code) lacks organization_id" in text
        assert "ix_bad_children_slug (slug) lacks organization_id" in text
        assert "(email) lacks organization_id" in text
        assert "foreign key (parent_id) -> parents" in text
        assert "ON DELETE CASCADE" in text
        assert len(bad) == 6

    def test_a_foreign_key_pairing_the_wrong_columns_is_reported(self) -> None:
        metadata = self._metadata()
        sa.Table(
            "crossed",
            metadata,
            sa.Column(
                ORGANIZATION_ID,
                sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("parent_id", sa.Uuid),
            # Composite, but organization_id is matched against the parent's id.
            sa.ForeignKeyConstraint(
                ["parent_id", ORGANIZATION_ID], ["parents.organization_id", "parents.id"]
            ),
        )
        problems = [p for p in tenant_schema_problems(metadata) if p.startswith("crossed:")]
        assert problems == [
            "crossed: foreign key (parent_id, organization_id) -> parents does not pair "
            "organization_id with the referred organization_id"
        ]


class TestMigratedDatabase:
    """The same rules, read back from the database the migrations built."""

    async def test_reflected_schema_follows_the_rules(self, database: Database) -> None:
        reflected = sa.MetaData()
        async with database.engine.connect() as connection:
            await connection.run_sync(reflected.reflect)
        assert tenant_table_names(reflected) == tenant_table_names(Base.metadata)
        for name in tenant_table_names(Base.metadata):
            model_key = [c.name for c in Base.metadata.tables[name].primary_key.columns]
            assert [c.name for c in reflected.tables[name].primary_key.columns] == model_key
        assert tenant_schema_problems(reflected) == []
