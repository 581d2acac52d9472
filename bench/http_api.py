"""Recording usage over HTTP: `saascore serve` beside a bare FastAPI endpoint, in one run.

(The issue's `bench/http.py`, renamed: a `bench/http.py` would hide the standard library's
`http` from every script run out of bench/.)

32 concurrent clients, each on a kept-alive HTTP/1.1 connection of its own (see `Connection`
for why not httpx), send `POST /v1/usage/events` with one event each time, as fast as the
answers come back, to:
  (a) `saascore serve` on PostgreSQL: API-key authentication, the plan's rate limits (none on
      the plan used here), validation, `UsageService.record` (group commit), the response;
  (b) a bare FastAPI endpoint served the same way (uvicorn, one process), which parses the same
      event and runs bench/metering.py's raw reference statement (b): one asyncpg CTE doing the
      conditional counter `UPDATE ... RETURNING` and the event `INSERT` together. No
      authentication and no rate limiting;
and (a) again with SAASCORE_AUTH_CACHE_SECONDS=5, where a busy key skips reading its
principal (see `saascore.identity.cache` for what that trades);
first with each client on an organisation (and key) of its own, then with every client on one
(a hot tenant). Prints requests/s, p50 and p99 of each and the ratio a/b, with the CPU time
spent per request by each server process and by the PostgreSQL backends serving it (read from
/proc, so on Linux with the database on this machine; steadier than requests/s when the
machine is shared), then the ceiling of the client itself (the bare server answering a
constant), which must stay well above (b) for the ratios to mean anything.

The organisations are on a plan without rate limits or usage limits, so that nothing is
refused and every request does the whole work. Both servers get the same pool of PostgreSQL
connections. SAASCORE_TEST_POSTGRES_URL picks the server (default
postgresql://postgres@127.0.0.1:5432/test); BENCH_SECONDS the time per measurement (default
5); BENCH_CLIENTS the concurrency (default 32). Everything lives in a schema of its own,
dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI, Header
from pydantic import BaseModel

from metering import LIMIT, METRIC, RAW_RECORD, URL
from saascore import Saascore, Settings
from saascore.kit.ids import new_id
from saascore.kit.time import day_start
from saascore.migrations import migrate
from saascore.models import UsageCounter
from saascore.plans import Catalog, PlanSpec, read_catalog

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
#: SAASCORE_AUTH_CACHE_SECONDS of the second saascore server (the first reads every credential).
CACHE_SECONDS = 5
#: PostgreSQL connections of each server (saascore's pool, the bare endpoint's pool).
POOL = 32
PLAN = "bench-unlimited"
SCRIPT = str(Path(__file__).resolve())
STARTUP_SECONDS = 60.0


# --- the bare endpoint (its own process: `python bench/http_api.py --bare PORT SCHEMA`) -------
class Event(BaseModel):
    id: str
    metric: str
    quantity: int


def bare_app(schema: str, application_name: str) -> FastAPI:
    state: dict[str, asyncpg.Pool] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settings = {"search_path": schema, "application_name": application_name}
        pool = await asyncpg.create_pool(
            URL, min_size=POOL, max_size=POOL, server_settings=settings
        )
        assert pool is not None
        state["pool"] = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/bare/usage/events", status_code=201)
    async def record(
        event: Event,
        x_organization: uuid.UUID = Header(),  # noqa: B008
    ) -> dict[str, object]:
        period = day_start(datetime.now(UTC))
        async with state["pool"].acquire() as connection:
            event_id = await connection.fetchval(
                RAW_RECORD,
                x_organization,
                event.metric,
                event.quantity,
                period,
                LIMIT,
                new_id(),
                event.id,
            )
        return {"id": event.id, "event_id": event_id, "status": "accepted"}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], cwd: str) -> Iterator[subprocess.Popen[str]]:
    """A server process, stopped after the block; its stderr (in a file, which never fills
    up as a pipe would) is shown if it holds a traceback."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors, text=True
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            errors.seek(0)
            text = errors.read()
            if "Traceback" in text:
                print(text, file=sys.stderr)


async def wait_until_up(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {STARTUP_SECONDS} s")


@dataclass(frozen=True)
class Target:
    """A server under load: its port, its process, and the name its PostgreSQL connections
    carry (`application_name`), by which their backends' CPU time is found."""

    port: int
    pid: int
    application_name: str


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system; Linux's /proc), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backends_cpu(admin: asyncpg.Connection, application_name: str) -> dict[int, float]:
    """The CPU time of each PostgreSQL backend serving `application_name` (same machine)."""
    pids = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return {row["pid"]: cpu_seconds(row["pid"]) for row in pids}


class Connection:
    """One kept-alive HTTP/1.1 connection, a request at a time: the few lines of a client that
    this benchmark needs. httpx, measured on this machine against a bare `GET /ping`, spent
    0.8 ms of CPU per request with one connection and 3 ms with 32 pooled ones (338 req/s
    at most), more than either server, so it would have measured itself; this spends 0.03 ms."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        length = 0
        for field in fields:
            name, _, value = field.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding":
                raise RuntimeError("chunked responses are not read by this client")
        return int(status_line.split(" ", 2)[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


#: One request of client `number` on its connection: (status, body).
Send = Callable[[Connection, int], Awaitable[tuple[int, bytes]]]


#: requests/s, p50 ms, p99 ms, the server's CPU ms per request and its database backends'.
Figures = tuple[float, float, float, float, float]


async def measure(target: Target, send: Send, expected: int, admin: asyncpg.Connection) -> Figures:
    """CLIENTS clients, each on a connection of its own, calling `send(connection, number)` as
    fast as the answers come, after a second's warm-up."""
    connections = [await Connection.open(target.port) for _ in range(CLIENTS)]
    latencies: list[float] = []

    async def client(number: int, until: float, keep: bool) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            status, body = await send(connections[number], number)
            if keep:
                latencies.append(time.perf_counter() - started)
            if status != expected:
                raise RuntimeError(f"port {target.port}: {status} {body[:300]!r}")

    try:
        warm_until = time.perf_counter() + 1.0
        await asyncio.gather(*(client(n, warm_until, False) for n in range(CLIENTS)))
        database = await backends_cpu(admin, target.application_name)
        started, cpu = time.perf_counter(), cpu_seconds(target.pid)
        await asyncio.gather(*(client(n, started + SECONDS, True) for n in range(CLIENTS)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(target.pid) - cpu
        after = await backends_cpu(admin, target.application_name)
        database_cpu = sum(seconds - database.get(pid, 0.0) for pid, seconds in after.items())
    finally:
        for connection in connections:
            await connection.close()
    latencies.sort()
    count = len(latencies)
    p99 = latencies[max(int(count * 0.99) - 1, 0)]
    return (
        count / elapsed,
        statistics.median(latencies) * 1000,
        p99 * 1000,
        cpu / count * 1000,
        database_cpu / count * 1000,
    )


def header(title: str) -> str:
    return (
        f"  {title:<40}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU ms/req: server':>20}{'database':>10}"
    )


def row(name: str, figures: Figures) -> str:
    rate, p50, p99, cpu, database = figures
    return f"  {name:<40}{rate:>8.0f}{p50:>8.1f}{p99:>8.1f}{cpu:>20.2f}{database:>10.2f}"


async def prepare(settings: Settings) -> tuple[list[uuid.UUID], list[str]]:
    """The schema, the catalog and a plan without limits, and CLIENTS organisations on it, each
    with an API key and today's counter (which the raw statement needs)."""
    async with Saascore(settings) as core:
        await migrate.upgrade(core.database)
        await core.plans.load_catalog(read_catalog())
        unlimited = PlanSpec(name="Bench: no rate or usage limits", api_access=True)
        await core.plans.load_catalog(Catalog(plans={PLAN: unlimited}))
        orgs, keys = [], []
        for number in range(CLIENTS):
            organization = await core.orgs.create(name=f"bench {number}", plan=PLAN)
            _, key = await core.api_keys.create(
                organization.id, name="bench", scopes=["usage:write"]
            )
            orgs.append(organization.id)
            keys.append(key)
        period = day_start(datetime.now(UTC))
        async with core.database.transaction() as s:
            for org in orgs:
                s.add(UsageCounter(organization_id=org, metric=METRIC, period_start=period))
    return orgs, keys


def event() -> bytes:
    return f'{{"id":"{uuid.uuid4().hex}","metric":"{METRIC}","quantity":1}}'.encode()


def saascore_send(key_of: Callable[[int], str]) -> Send:
    def send(connection: Connection, number: int) -> Awaitable[tuple[int, bytes]]:
        headers = {"X-API-Key": key_of(number), "Content-Type": "application/json"}
        return connection.request("POST", "/v1/usage/events", headers, event())

    return send


def bare_send(org_of: Callable[[int], uuid.UUID]) -> Send:
    def send(connection: Connection, number: int) -> Awaitable[tuple[int, bytes]]:
        headers = {"X-Organization": str(org_of(number)), "Content-Type": "application/json"}
        return connection.request("POST", "/bare/usage/events", headers, event())

    return send


def ping(connection: Connection, _number: int) -> Awaitable[tuple[int, bytes]]:
    return connection.request("GET", "/ping", {})


async def main() -> None:
    tag = secrets.token_hex(4)
    schema = f"bench_http_{tag}"
    names = {
        "saascore": f"bench-http-saascore-{tag}",
        "cached": f"bench-http-cached-{tag}",
        "bare": f"bench-http-bare-{tag}",
    }
    admin = await asyncpg.connect(URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        orgs, keys = await prepare(
            Settings(_env_file=None, database_url=URL, database_schema=schema)
        )
        environment = {
            **os.environ,
            "DATABASE_URL": URL,
            "SAASCORE_DATABASE_SCHEMA": schema,
            "SAASCORE_SERVICE_NAME": names["saascore"],
            "SAASCORE_JWT_SECRET": secrets.token_urlsafe(32),
            "SAASCORE_LOG_LEVEL": "warning",
            "SAASCORE_AUTO_MIGRATE": "false",
            "SAASCORE_RATE_LIMIT_STORAGE": "memory://",
            "DB_POOL_SIZE": str(POOL),
            "DB_MAX_OVERFLOW": "0",
        }
        cached_environment = {
            **environment,
            "SAASCORE_SERVICE_NAME": names["cached"],
            "SAASCORE_AUTH_CACHE_SECONDS": str(CACHE_SECONDS),
        }
        ports = {"saascore": free_port(), "cached": free_port(), "bare": free_port()}
        saascore = str(Path(sys.executable).with_name("saascore"))
        with (
            tempfile.TemporaryDirectory() as cwd,  # away from any .env of this checkout
            server(
                [saascore, "serve", "--port", str(ports["saascore"])], environment, cwd
            ) as saascore_process,
            server(
                [saascore, "serve", "--port", str(ports["cached"])], cached_environment, cwd
            ) as cached_process,
            server(
                [sys.executable, SCRIPT, "--bare", str(ports["bare"]), schema, names["bare"]],
                environment,
                cwd,
            ) as bare_process,
        ):
            await wait_until_up(saascore_process, f"http://127.0.0.1:{ports['saascore']}/health")
            await wait_until_up(cached_process, f"http://127.0.0.1:{ports['cached']}/health")
            await wait_until_up(bare_process, f"http://127.0.0.1:{ports['bare']}/ping")
            a_target = Target(ports["saascore"], saascore_process.pid, names["saascore"])
            b_target = Target(ports["bare"], bare_process.pid, names["bare"])
            c_target = Target(ports["cached"], cached_process.pid, names["cached"])
            print(f"{CLIENTS} clients, {SECONDS:g} s per line; PostgreSQL {POOL} connections each")
            print(header("POST /v1/usage/events, one event"))
            for title, key_of, org_of in (
                ("own organisation", keys.__getitem__, orgs.__getitem__),
                ("hot tenant", lambda _n: keys[0], lambda _n: orgs[0]),
            ):
                a = await measure(a_target, saascore_send(key_of), 201, admin)
                c = await measure(c_target, saascore_send(key_of), 201, admin)
                b = await measure(b_target, bare_send(org_of), 201, admin)
                print(row(f"(a) saascore serve, {title}", a))
                print(row(f"    with a {CACHE_SECONDS} s principal cache", c))
                print(row(f"(b) bare FastAPI + raw CTE, {title}", b))
                print(
                    f"      a/b = {a[0] / b[0]:.2f} (target >= 0.6), with the cache"
                    f" {c[0] / b[0]:.2f}; CPU per request a/b: server {a[3] / b[3]:.2f},"
                    f" server and database {(a[3] + a[4]) / (b[3] + b[4]):.2f}"
                )
            print(row("client ceiling: bare GET /ping", await measure(b_target, ping, 200, admin)))
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        port, schema, application_name = int(sys.argv[2]), sys.argv[3], sys.argv[4]
        app = bare_app(schema, application_name)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        asyncio.run(main())
