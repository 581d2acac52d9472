"""`saascore serve` and `saascore demo` serve HTTP until they are stopped."""

from __future__ import annotations

import re
import socket
import sqlite3
import uuid
from contextlib import closing

import httpx
import pytest

from saascore.kit.db import Database
from tests.cli.runner import Cli, free_port
from tests.helpers import settings_env

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve(cli: Cli, database: Database) -> None:
    """On a database that is migrated already (a configured one is never migrated at start)."""
    port = free_port()
    served = cli.with_env(settings_env(database.settings))
    with served.server("serve", "--port", str(port), port=port) as server:
        body = server.wait_until_healthy().json()
    assert body["status"] == "ok"
    assert body["database"] == {"status": "healthy", "database": "sqlite"}
    assert "Traceback" not in server.stderr


def test_serve_checks_settings_before_starting(cli: Cli) -> None:
    result = cli.with_env({"DB_POOL_SIZE": "abc"})("serve", "--port", str(free_port()))
    assert "DB_POOL_SIZE" in result.error_line(2)


def test_demo(cli: Cli) -> None:
    """From an empty directory, on the embedded database whatever DATABASE_URL says."""
    port = free_port()
    elsewhere = cli.with_env({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    with elsewhere.server("demo", "--port", str(port), port=port) as server:
        body = server.wait_until_healthy().json()
    assert body["status"] == "ok"
    assert body["database"] == {"status": "healthy", "database": "sqlite"}

    database_file = cli.cwd / ".saascore" / "saascore.db"
    with closing(sqlite3.connect(database_file)) as connection:
        (stored_id,) = connection.execute(
            "SELECT id FROM organizations WHERE external_id = 'demo' AND name = ?",
            ("Demo Organization",),
        ).fetchone()
    assert UUID.findall(server.stdout) == [str(uuid.UUID(stored_id))]
    assert str(database_file) in server.stdout
    assert f"http://127.0.0.1:{port}/healthz" in server.stdout
    assert f"http://127.0.0.1:{port}/docs" in server.stdout
    assert "Traceback" not in server.stderr


def test_demo_on_a_busy_port_says_so_in_one_line(cli: Cli) -> None:
    """Before any banner or database work: one line and exit 1, nothing created."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("demo", "--port", str(port))
    line = result.error_line(1)
    assert line == (
        f"saascore: port {port} on 127.0.0.1 is in use: stop what holds it, or pick another "
        "with --port (make demo PORT=8010)"
    )
    assert result.stdout == ""
    assert not (cli.cwd / ".saascore").exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_does_not_take_the_client_address_from_a_header(cli: Cli, database: Database) -> None:
    """uvicorn's own proxy handling believes `X-Forwarded-For` from any loopback peer, so
    rotating the header escaped the per-address login limit. `serve` turns it off: with no
    trusted proxy (the default), the peer is the client."""
    port = free_port()
    env = {**settings_env(database.settings), "SAASCORE_AUTH_REQUESTS_PER_MINUTE": "2"}
    with cli.with_env(env).server("serve", "--port", str(port), port=port) as server:
        server.wait_until_healthy()
        statuses = [
            httpx.post(
                server.url("/v1/auth/login"),
                json={"email": f"guess-{i}@example.com", "password": "some password"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=10.0,
            ).status_code
            for i in range(4)
        ]
    assert statuses == [401, 401, 429, 429]
