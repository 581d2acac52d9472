"""Types for request bodies that say exactly what the server accepts.

JSON has one number type and booleans of its own; Pydantic's lax mode would take `true` as 1,
`"5"` as 5 and `5.0` as 5, while the OpenAPI document says `integer`. Request schemas use
`StrictInt` instead of `int`: a JSON integer, nothing else (422 otherwise), and `StrictBool`
instead of `bool`: `true` or `false`, never `0`, `1` or `"yes"`, so that clients, fuzzers and
the server agree. Query and path parameters arrive as text and stay lax.

    class CreditGrantCreate(BaseModel):
        amount: StrictInt = Field(ge=1, le=INT64)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Strict

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "StrictBool",
    "StrictInt",
]

#: The range of PostgreSQL's bigint (and SQLite's integer).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The range of PostgreSQL's integer.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: A credit grant's draw order (an integer column): the API and the CLI take the same range.
PRIORITY_MIN, PRIORITY_MAX = -INT32_MAX, INT32_MAX

#: An integer in a request body: a JSON integer only (no booleans, strings or floats).
StrictInt = Annotated[int, Strict()]

#: A boolean in a request body: a JSON `true` or `false` only (no `0`, `1` or strings).
StrictBool = Annotated[bool, Strict()]
