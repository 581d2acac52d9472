"""`saascore serve` and `saascore demo` serve HTTP until they are stopped."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import subprocess
import uuid
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest

from saascore.kit.db import Database
from tests.cli.runner import Cli, Server, free_port
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
        actions = connection.execute(
            "SELECT action, actor_type FROM audit_logs WHERE organization_id = ? ORDER BY seq",
            (stored_id,),
        ).fetchall()
    # Its chain opens with its creation and the plan's credits, as every organisation's does.
    assert actions[:2] == [("organization.created", "system"), ("credits.granted", "system")]
    assert UUID.findall(server.stdout) == [str(uuid.UUID(stored_id))]
    assert str(database_file) in server.stdout
    assert f"http://127.0.0.1:{port}/healthz" in server.stdout
    assert f"http://127.0.0.1:{port}/docs" in server.stdout
    assert "Traceback" not in server.stderr


@dataclass(frozen=True)
class DemoBanner:
    email: str
    password: str
    key: str
    curl: str


def read_banner(server: Server) -> DemoBanner:
    """The login, key and curl command the running demo printed."""
    server.wait_until_healthy()
    curl = server.read_stdout_until(r"^curl .*\n").group(0).strip()
    printed = server.early_stdout
    email = re.search(r"login e-mail\s+(\S+)", printed)
    password = re.search(r"password\s+(\S+)", printed)
    key = re.search(r"API key\s+(\S+)", printed)
    assert email, printed
    assert password, printed
    assert key, printed
    return DemoBanner(email[1], password[1], key[1], curl)


def run_printed_curl(command: str) -> dict[str, object]:
    """Run the command as a user pasting it into a shell would."""
    done = subprocess.run(  # noqa: S602 (the command is the demo's, pasted as a user would)
        command, shell=True, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    body: dict[str, object] = json.loads(done.stdout)
    return body


def log_in(server: Server, banner: DemoBanner) -> str:
    response = httpx.post(
        server.url("/v1/auth/login"),
        json={"email": banner.email, "password": banner.password},
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def tokens_used(server: Server, credential: str) -> int:
    response = httpx.get(
        server.url("/v1/usage/limits"),
        headers={"Authorization": f"Bearer {credential}"},
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    (tokens,) = [row for row in response.json()["limits"] if row["metric"] == "tokens"]
    used: int = tokens["used"]
    return used


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed command runs curl")
def test_demo_lets_a_user_in_and_prints_a_curl_that_records_an_event(cli: Cli) -> None:
    """The login works over HTTP; the key is an `sk_test_` key; the printed curl, pasted
    into a shell, records an event; and the plan's rate limits are out of a walkthrough's
    reach (more requests than Pro allows in a minute all pass). A restart on the same data
    keeps the login, and its new key replaces the old one."""
    port = free_port()
    with cli.server("demo", "--port", str(port), port=port) as server:
        first = read_banner(server)
        assert first.key.startswith("sk_test_")
        assert first.key in first.curl
        assert first.curl.startswith(f"curl -s -X POST http://127.0.0.1:{port}/v1/usage/events ")
        access = log_in(server, first)
        me = httpx.get(
            server.url("/v1/me"), headers={"Authorization": f"Bearer {access}"}, timeout=10.0
        )
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == first.email
        assert me.json()["role"] == "owner"

        recorded = run_printed_curl(first.curl)
        assert recorded["status"] == "accepted", recorded
        quantity = recorded["quantity"]
        assert isinstance(quantity, int)
        assert quantity > 0
        assert tokens_used(server, access) == quantity
        assert run_printed_curl(first.curl)["status"] == "duplicate"  # idempotent on its id

        with httpx.Client(headers={"Authorization": f"Bearer {first.key}"}) as client:
            statuses = {client.get(server.url("/v1/usage/limits")).status_code for _ in range(60)}
            assert statuses == {200}
            # The key reaches every tenant surface a walkthrough tries, but no admin one.
            folder = client.post(server.url("/v1/folders"), json={"name": "walkthrough"})
            assert folder.status_code == 201, folder.text
            assert client.get(server.url("/v1/folders")).status_code == 200
            assert client.get(server.url("/v1/billing/overview")).status_code == 200
            users = client.get(server.url("/v1/users"))
            assert users.status_code == 403, users.text
            assert users.json()["error"]["code"] == "permission_denied"
            # A mock checkout returns to the demo, on the port it serves.
            started = client.post(server.url("/v1/subscription/checkout"), json={"plan": "pro"})
            assert started.status_code == 200, started.text
            confirmed = client.post(started.json()["url"], data={"confirm": "1"})
            assert confirmed.status_code == 303, confirmed.text
            assert confirmed.headers["location"] == server.url("/?checkout=success")

    port = free_port()
    with cli.server("demo", "--port", str(port), port=port) as server:
        second = read_banner(server)
        assert (second.email, second.password) == (first.email, first.password)
        assert second.key.startswith("sk_test_")
        assert second.key != first.key
        access = log_in(server, second)
        recorded = run_printed_curl(second.curl)
        assert recorded["status"] == "accepted", recorded
        assert tokens_used(server, second.key) == 2 * quantity
        revoked = httpx.get(
            server.url("/v1/usage/limits"),
            headers={"Authorization": f"Bearer {first.key}"},
            timeout=10.0,
        )
        assert revoked.status_code == 401
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


def test_demo_serves_on_saascore_port_by_default(cli: Cli) -> None:
    """`demo` defaults to the configured port, as `serve` does: a busy SAASCORE_PORT is the
    port it refuses (before any banner), not 8000."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli.with_env({"SAASCORE_PORT": str(port)})("demo")
    assert result.error_line(1).startswith(f"saascore: port {port} on 127.0.0.1 is in use")
