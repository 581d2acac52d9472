"""What building the facade imports: not what only some commands or requests use.

Every CLI command that touches the database imports `saascore.core` and builds a `Saascore`, so
each library the facade loads eagerly is paid for by every command (most of a second in all,
before these were deferred). A check of what is imported, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.runner import clean_environment

#: Loaded where they are used, never by importing or building the facade on SQLite with the
#: default settings (no migrations, a memory:// rate limiter, the mock payment provider and
#: LLM gateway): the migrations (alembic, and mako and pygments through it), the Redis rate
#: limit storage (redis, and cryptography through it), the HTTP layer (fastapi, starlette),
#: the HTTP clients of webhooks and the LLM gateway (httpx, with rich through its CLI),
#: tokens (jwt), invoice renderings (jinja2, anyio, weasyprint) and the payment providers'
#: SDKs (stripe).
DEFERRED = (
    "alembic",
    "anyio",
    "cryptography",
    "fastapi",
    "httpx",
    "jinja2",
    "jwt",
    "mako",
    "pygments",
    "redis",
    "rich",
    "starlette",
    "stripe",
    "weasyprint",
)

#: Imports the facade, builds it on the SQLite file argv[1] and enters and leaves it (which
#: starts and closes every service), then prints which deferred modules got loaded.
BUILD = """
import asyncio, json, sys

import saascore.core

imported = [name for name in json.loads(sys.argv[2]) if name in sys.modules]

from saascore.config import Settings
from saascore.core import Saascore

async def build() -> None:
    settings = Settings(database_url="sqlite:///" + sys.argv[1], data_dir=sys.argv[3])
    async with Saascore(settings):
        pass

asyncio.run(build())
built = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
print(json.dumps({"imported": imported, "built": built}))
"""


def test_the_facade_loads_none_of_the_deferred_modules(tmp_path: Path) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD,
            str(tmp_path / "saascore.db"),
            json.dumps(DEFERRED),
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    loaded = json.loads(process.stdout.splitlines()[-1])
    assert loaded == {"imported": [], "built": []}
