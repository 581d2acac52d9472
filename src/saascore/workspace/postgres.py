"""The workspace's PostgreSQL statements: a document's registration in one statement, and a
batch of registrations in two.

`REGISTER` does what `DocumentService.register` does in a session, in one statement and one
round trip, in a transaction of its own (autocommit), on the driver's connection:

1. `owner` and `folder` lock the organisation and the document's folder, if it names one,
   against deletion and changes of their keys (`FOR KEY SHARE`, the locks the document's
   foreign keys take, but first);
2. `added` inserts the document if its organisation and folder are there (`ON CONFLICT DO
   NOTHING` on the unique index of its content in its folder: no row for content already there,
   or for a folder that is not, which the caller then tells apart in a session);
3. `counted` adds its size to the organisation's storage gauge by metering's conditional
   UPDATE (`gauge.storage_increment_sql`, the limit resolved inside it), only if it was
   inserted;
4. the audit log's CTEs (`append_to_head_sql`) append the `document.created` entry to the
   organisation's chain and write the event's outbox row, only if it was counted (the
   dispatchers' wake-up is sent after the commit, shared with other registrations: see
   `events.bus.Wakeup`);
5. the final SELECT calls `saascore_limit_exceeded()` when the document went in but is not
   on the chain: refused by the limit, or the organisation has no `usage_limits` row or no
   chain head yet. The error aborts the whole statement, so nothing is written; the caller
   says why (a refusal of the limit, read from the gauge), or registers in a session
   instead, which makes what is missing.

Every registration locks in one order, the session's too: the organisation and the folder
(`FOR KEY SHARE`), the document's index entries, the gauge's row, the chain's head. So
whoever locks one of the first two against that (a recursive folder delete locks the folder,
then the gauge; a provider's customer being linked changes a key of the organisation, then
grants credits on the gauge) and a registration wait for each other, never deadlock.

Registrations that arrive together are written as a batch (`DocumentService`'s group commit), in
one transaction of two statements, locking in the same order: `CLAIM` locks the batch's
organisations and folders and inserts its documents (in one order, so that two batches of the
same content wait rather than deadlock), then locks and reads the gauges and chain heads of
their organisations (in organisation order, each gauge before its head); the caller decides each
registration in arrival order against them; `WRITE` removes the documents it refused, adds the
others' sizes to the gauges and appends their entries and outbox rows (`CHAINED_SQL`). A
registration whose document did not go in (content already there, a folder that is not) is left
to a session, which says which.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

import asyncpg
import sqlalchemy as sa

from saascore.audit.service import APPEND_TYPES, CHAINED_SQL, append_to_head_sql
from saascore.events.bus import OUTBOX_TIMES
from saascore.kit.db import asyncpg_form
from saascore.metering.gauge import RESOLVED_CAP_SQL, storage_increment_sql
from saascore.metering.postgres import LIMIT_EXCEEDED_SQLSTATE

__all__ = [
    "CLAIM",
    "INSERTED",
    "REGISTER",
    "WRITE",
    "Gauge",
    "Outcome",
    "claim",
    "run_register",
    "write",
]

#: The document's columns that a registration sets, with their PostgreSQL types (`metadata`
#: is sent as its JSON text); the others keep their defaults (NULL). `updated_at` is set to
#: `created_at`.
INSERTED: Final = {
    "organization_id": "uuid",
    "id": "uuid",
    "folder_id": "uuid",
    "filename": "text",
    "original_filename": "text",
    "content_type": "text",
    "size_bytes": "bigint",
    "file_hash": "text",
    "storage_uri": "text",
    "status": "text",
    "uploaded_by": "uuid",
    "metadata": "text",
    "created_at": "timestamptz",
}


def _stored(value: str, name: str) -> str:
    """The value stored in column `name` from `value`, an SQL expression of its `INSERTED` type."""
    return f"CAST({value} AS jsonb)" if name == "metadata" else value


#: `REGISTER`'s values of the document's columns, from its bind parameters (prefixed: the
#: audit log's parameters are named as its columns).
_VALUES: Final = ", ".join(
    _stored(f"CAST(:doc_{name} AS {type_})", name) for name, type_ in INSERTED.items()
)
REGISTER: Final = sa.text(
    f"""\
WITH RECURSIVE
owner AS MATERIALIZED (
  SELECT FROM organizations WHERE id = CAST(:doc_organization_id AS uuid) FOR KEY SHARE
),
folder AS MATERIALIZED (
  SELECT FROM folders
  WHERE organization_id = CAST(:doc_organization_id AS uuid)
    AND id = CAST(:doc_folder_id AS uuid)
  FOR KEY SHARE
),
added AS (
  INSERT INTO documents ({", ".join(INSERTED)}, updated_at)
  SELECT {_VALUES}, CAST(:doc_created_at AS timestamptz)
  WHERE EXISTS (SELECT FROM owner)
    AND (CAST(:doc_folder_id AS uuid) IS NULL OR EXISTS (SELECT FROM folder))
  ON CONFLICT DO NOTHING
  RETURNING id
),
counted AS (
{
        storage_increment_sql(
            "CAST(:doc_organization_id AS uuid)",
            "CAST(:doc_size_bytes AS bigint)",
            "CAST(:doc_updated_at AS timestamptz)",
            when="EXISTS (SELECT FROM added)",
        )
    }
),
{append_to_head_sql("EXISTS (SELECT FROM counted)")}
SELECT
  (SELECT count(*) FROM added) AS added,
  (SELECT count(*) FROM notified) AS notified,
  CASE WHEN EXISTS (SELECT FROM added) AND NOT EXISTS (SELECT FROM advanced)
    THEN saascore_limit_exceeded('storage_bytes', NULL)
  END AS refused"""  # noqa: S608
).bindparams(*APPEND_TYPES)


@functools.cache
def _compiled() -> tuple[str, tuple[str, ...]]:
    """`REGISTER` for asyncpg: its SQL (`$n` parameters) and its parameters' names in order."""
    return asyncpg_form(REGISTER)


class Outcome(Enum):
    """What `run_register` did."""

    #: The document is registered, and the transaction committed.
    REGISTERED = "registered"
    #: Nothing went in: the same content is in the folder already, or the folder is not
    #: there (or not the organisation's). Nothing was written.
    ABSENT = "absent"
    #: The document would go in but is not on the chain (see the module's docstring):
    #: nothing was written.
    REFUSED = "refused"


async def run_register(
    connection: asyncpg.Connection,
    values: dict[str, Any],
    chain: dict[str, Any],
) -> Outcome:
    """Run `REGISTER` for a document's `values` (its columns) and `chain` (the parameters of
    its event's audit entry and outbox row, `AuditService.append_parameters`)."""
    sql, names = _compiled()
    parameters = {**chain, **{f"doc_{name}": value for name, value in values.items()}}
    parameters["doc_metadata"] = json.dumps(values["metadata"])
    try:
        row = await connection.fetchrow(sql, *(parameters[name] for name in names))
    except asyncpg.PostgresError as error:
        if error.sqlstate != LIMIT_EXCEEDED_SQLSTATE:
            raise
        return Outcome.REFUSED
    assert row is not None
    return Outcome.REGISTERED if row["added"] else Outcome.ABSENT


_SELECTED: Final = ", ".join(_stored(f"d.{name}", name) for name in INSERTED)

#: A batch's first statement: its organisations and folders locked as `REGISTER` locks them, its
#: documents inserted (`ON CONFLICT DO NOTHING`, as `REGISTER`), then, once they all are (the
#: aggregate reads every one first), the gauges and chain heads of their organisations locked,
#: in organisation order: each organisation's total, hard storage limit (NULL: none), head, and
#: which of its documents went in. An organisation with no `usage_limits` row or no chain head
#: yet has no row.
CLAIM: Final = sa.text(
    f"""\
WITH owners AS MATERIALIZED (
  SELECT id FROM organizations
  WHERE id = ANY (CAST(:owner_id AS uuid[]))
  ORDER BY id
  FOR KEY SHARE
),
folder AS MATERIALIZED (
  SELECT f.organization_id, f.id
  FROM folders AS f
  JOIN unnest(CAST(:folder_organization_id AS uuid[]), CAST(:folder_id AS uuid[]))
    AS w (organization_id, id) ON f.organization_id = w.organization_id AND f.id = w.id
  ORDER BY f.organization_id, f.id
  FOR KEY SHARE OF f
),
added AS (
  INSERT INTO documents ({", ".join(INSERTED)}, updated_at)
  SELECT {_SELECTED}, d.created_at
  FROM unnest(
  {", ".join(f"CAST(:doc_{name} AS {type_}[])" for name, type_ in INSERTED.items())}
  ) AS d ({", ".join(INSERTED)})
  WHERE d.organization_id = ANY (ARRAY(SELECT id FROM owners))
    AND (d.folder_id IS NULL OR EXISTS (
      SELECT FROM folder WHERE folder.organization_id = d.organization_id
        AND folder.id = d.folder_id
    ))
  ON CONFLICT DO NOTHING
  RETURNING organization_id, id
),
per_org AS (
  SELECT organization_id, array_agg(id) AS added FROM added GROUP BY organization_id
)
SELECT ul.organization_id, ul.storage_used_bytes, {RESOLVED_CAP_SQL} AS cap, h.seq, h.hash,
  per_org.added
FROM per_org
JOIN usage_limits AS ul ON ul.organization_id = per_org.organization_id
JOIN audit_chain_heads AS h ON h.organization_id = ul.organization_id
ORDER BY ul.organization_id
FOR UPDATE OF ul, h"""  # noqa: S608
)

#: A batch's second statement, once it has decided: the documents it does not keep removed,
#: the kept ones' bytes added to their gauges, and their audit entries and outbox rows
#: written (`CHAINED_SQL`).
WRITE: Final = sa.text(
    f"""\
WITH removed AS (
  DELETE FROM documents AS d
  USING unnest(CAST(:gone_organization_id AS uuid[]), CAST(:gone_id AS uuid[]))
    AS g (organization_id, id)
  WHERE d.organization_id = g.organization_id AND d.id = g.id
),
counted AS (
  UPDATE usage_limits AS ul
  SET storage_used_bytes = ul.storage_used_bytes + g.delta, updated_at = :now
  FROM unnest(CAST(:gauge_organization_id AS uuid[]), CAST(:gauge_delta AS bigint[]))
    AS g (organization_id, delta)
  WHERE ul.organization_id = g.organization_id
),
{CHAINED_SQL}
SELECT 1"""  # noqa: S608
).bindparams(OUTBOX_TIMES, sa.bindparam("now", type_=sa.DateTime(timezone=True)))


@functools.cache
def _batch_compiled() -> tuple[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]]:
    """`CLAIM` and `WRITE` for asyncpg."""
    return asyncpg_form(CLAIM), asyncpg_form(WRITE)


@dataclass(slots=True)
class Gauge:
    """An organisation's gauge and chain head as `CLAIM` read them, then as a batch's
    decisions leave them (`used`)."""

    used: int
    #: The hard storage limit (None: none).
    cap: int | None
    head: tuple[int, str | None]


#: The folder a document at the root sorts by: `claim` inserts a batch's documents in one
#: order, so that two batches of the same content wait for each other rather than deadlock.
_NO_FOLDER: Final = uuid.UUID(int=0)


async def claim(
    connection: asyncpg.Connection, documents: Sequence[dict[str, Any]]
) -> tuple[dict[uuid.UUID, Gauge], set[uuid.UUID]]:
    """Run `CLAIM`, in the connection's transaction, for `documents` (their columns): the
    gauges (and heads) of their organisations, locked, and the ids of those that went in."""
    (sql, names), _ = _batch_compiled()
    ordered = sorted(
        documents,
        key=lambda v: (v["organization_id"], v["folder_id"] or _NO_FOLDER, v["file_hash"]),
    )
    parameters: dict[str, Any] = {
        f"doc_{name}": [document[name] for document in ordered] for name in INSERTED
    }
    parameters["doc_metadata"] = [json.dumps(metadata) for metadata in parameters["doc_metadata"]]
    folders = sorted({(v["organization_id"], v["folder_id"]) for v in ordered if v["folder_id"]})
    parameters["owner_id"] = sorted({v["organization_id"] for v in ordered})
    parameters["folder_organization_id"] = [org_id for org_id, _ in folders]
    parameters["folder_id"] = [folder_id for _, folder_id in folders]
    rows = await connection.fetch(sql, *(parameters[name] for name in names))
    gauges = {
        row["organization_id"]: Gauge(
            row["storage_used_bytes"], row["cap"], (row["seq"], row["hash"])
        )
        for row in rows
    }
    return gauges, {document_id for row in rows for document_id in row["added"]}


async def write(
    connection: asyncpg.Connection,
    gone: Sequence[tuple[uuid.UUID, uuid.UUID]],
    gauges: Mapping[uuid.UUID, int],
    chain: Mapping[str, list[Any]],
    now: datetime,
) -> None:
    """Run `WRITE`, in the connection's transaction (after `claim`): remove the documents
    `gone` (organisation, id), add `gauges`' bytes to the organisations' gauges and write
    `chain` (`AuditService.chained_parameters`)."""
    _, (sql, names) = _batch_compiled()
    parameters = {
        "gone_organization_id": [org_id for org_id, _ in gone],
        "gone_id": [document_id for _, document_id in gone],
        "gauge_organization_id": list(gauges),
        "gauge_delta": list(gauges.values()),
        "now": now,
        **chain,
    }
    await connection.execute(sql, *(parameters[name] for name in names))
