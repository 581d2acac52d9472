"""The workspace's PostgreSQL statement: a document's registration in one statement.

`REGISTER` does what `DocumentService.register` does in a session, in one statement and one
round trip, in a transaction of its own (autocommit), on the driver's connection:

1. `added` inserts the document (`ON CONFLICT DO NOTHING` on the unique index of its content
   in its folder: no row for content already there, which the caller then looks up);
2. `counted` adds its size to the organisation's storage gauge by metering's conditional
   UPDATE (`gauge.storage_increment_sql`, the limit resolved inside it), only if it was
   inserted;
3. the audit log's CTEs (`append_to_head_sql`) append the `document.created` entry to the
   organisation's chain and write the event's outbox row, only if it was counted (the
   dispatchers' wake-up is sent after the commit, shared with other registrations: see
   `events.bus.Wakeup`);
4. the final SELECT calls `saascore_limit_exceeded()` when the document went in but is not
   on the chain: refused by the limit, or the organisation has no `usage_limits` row or no
   chain head yet. The error aborts the whole statement, so nothing is written; the caller
   says why (a refusal of the limit, read from the gauge), or registers in a session
   instead, which makes what is missing.

The rows are locked in the order the session's registration locks them (the document's
index entries, then the gauge's row, then the chain's head), which deletions follow too.
"""

from __future__ import annotations

import functools
import json
from enum import Enum
from typing import Any, Final

import asyncpg
import sqlalchemy as sa

from saascore.audit.service import APPEND_TYPES, append_to_head_sql
from saascore.kit.db import asyncpg_form
from saascore.metering.gauge import storage_increment_sql
from saascore.metering.postgres import LIMIT_EXCEEDED_SQLSTATE

__all__ = ["REGISTER", "Outcome", "run_register"]

#: The document's columns that a registration sets, as their bind parameters (prefixed: the
#: audit log's parameters are named as its columns); the others keep their defaults (NULL).
_COLUMNS: Final = {
    "organization_id": "CAST(:doc_organization_id AS uuid)",
    "id": "CAST(:doc_id AS uuid)",
    "folder_id": "CAST(:doc_folder_id AS uuid)",
    "filename": ":doc_filename",
    "original_filename": ":doc_original_filename",
    "content_type": ":doc_content_type",
    "size_bytes": "CAST(:doc_size_bytes AS bigint)",
    "file_hash": ":doc_file_hash",
    "storage_uri": ":doc_storage_uri",
    "status": ":doc_status",
    "uploaded_by": "CAST(:doc_uploaded_by AS uuid)",
    "metadata": "CAST(CAST(:doc_metadata AS text) AS jsonb)",
    "created_at": "CAST(:doc_created_at AS timestamptz)",
    "updated_at": "CAST(:doc_updated_at AS timestamptz)",
}

REGISTER: Final = sa.text(
    f"""\
WITH RECURSIVE
added AS (
  INSERT INTO documents ({", ".join(_COLUMNS)})
  VALUES ({", ".join(_COLUMNS.values())})
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
    #: The same content is in the folder already: nothing was written.
    PRESENT = "present"
    #: The document would go in but is not on the chain (see the module's docstring):
    #: nothing was written.
    REFUSED = "refused"
    #: The folder is not there (or not the organisation's): nothing was written.
    NO_FOLDER = "no folder"


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
    except asyncpg.ForeignKeyViolationError:
        return Outcome.NO_FOLDER
    except asyncpg.PostgresError as error:
        if error.sqlstate != LIMIT_EXCEEDED_SQLSTATE:
            raise
        return Outcome.REFUSED
    assert row is not None
    return Outcome.REGISTERED if row["added"] else Outcome.PRESENT
