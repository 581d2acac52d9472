"""The database: async engines and sessions, on PostgreSQL (asyncpg) or SQLite (aiosqlite).

`Database(settings)` owns one engine per event loop (an asyncpg connection belongs to the loop
that opened it, seed 001), created on first use. Sessions never expire objects on commit.

On SQLite every connection runs in WAL mode with foreign keys on and a busy timeout, and write
transactions start with `BEGIN IMMEDIATE`: a second writer waits for the lock instead of failing
halfway through its transaction when it tries to upgrade a read lock.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.pool import NullPool
from sqlalchemy.util import greenlet_spawn

from saascore.config import DatabaseBackend, Settings
from saascore.kit.errors import DatabaseUnavailable

__all__ = [
    "SQLITE_BEGIN",
    "CloudSQLConnector",
    "Database",
    "SaascoreSession",
    "asyncpg_form",
    "describe_connection_error",
    "driver_in",
    "exact_sum",
    "is_arithmetic_error",
    "is_timeout",
    "joined_sum",
]

#: The execution option that picks SQLite's BEGIN mode (DEFERRED unless set).
SQLITE_BEGIN = "saascore_sqlite_begin"

#: Statements each PostgreSQL connection keeps prepared (SQLAlchemy's asyncpg default is 100).
#: A statement not among them is prepared again, one more round trip: a transaction with a
#: savepoint per item (the billing run's hundred organisations: `SAVEPOINT sa_savepoint_1` to
#: `_100` and their releases are as many distinct statements) would otherwise push its own
#: statements out of a cache of 100 and prepare nearly every one of them again.
PREPARED_STATEMENTS = 1000

#: Seconds the client waits past the server's `statement_timeout` before it gives up on a
#: statement itself: the server's cancellation is the clean one, this is for a dead server.
STATEMENT_GRACE_SECONDS = 2.0


class CloudSQLConnector(Protocol):
    """What saascore needs of `google.cloud.sql.connector.Connector` (the `cloudsql` extra)."""

    async def connect_async(
        self, instance_connection_string: str, driver: str, **kwargs: Any
    ) -> Any: ...

    async def close_async(self) -> None: ...


ConnectorFactory = Callable[[], Awaitable[CloudSQLConnector]]


async def _google_connector() -> CloudSQLConnector:
    try:
        from google.cloud.sql.connector import create_async_connector
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise DatabaseUnavailable(
            "USE_CLOUD_SQL_CONNECTOR is true but the Cloud SQL connector is not installed: "
            "pip install 'saascore[cloudsql]'"
        ) from None
    connector: CloudSQLConnector = await create_async_connector()
    return connector


class SaascoreSession(Session):
    """The sessions `Database` makes. A class of their own so that listeners can be set once
    for all of them (the event bus's after-commit work) rather than on every session."""


@dataclass
class _LoopState:
    engine: AsyncEngine
    read_sessions: async_sessionmaker[AsyncSession]
    write_sessions: async_sessionmaker[AsyncSession]
    connector: CloudSQLConnector | None = None


@dataclass(frozen=True)
class _RawStatement:
    """A select compiled once for asyncpg: its SQL, its parameters in `$n` order, and how to
    turn a driver record into the row SQLAlchemy would return."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    make_row: Callable[..., Any]

    @classmethod
    def compile(cls, query: sa.Select[Any], dialect: sa.Dialect) -> _RawStatement:
        compiled = query.compile(dialect=dialect)
        columns = compiled._result_columns
        keys = [column.keyname for column in columns]
        return cls(
            sql=str(compiled),
            names=tuple(compiled.positiontup or ()),
            processors=tuple(
                column.type._cached_result_processor(dialect, None) for column in columns
            ),
            make_row=namedtuple("Row", keys),
        )

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        return [parameters[name] for name in self.names]

    def row(self, record: Any) -> Any:
        return self.make_row(
            *(
                value if process is None else process(value)
                for value, process in zip(record, self.processors, strict=True)
            )
        )


class Database:
    """Engines and sessions for one configured database.

    `session()` yields a session whose transaction the caller commits; `transaction()` yields one
    inside a transaction that commits when the block ends and rolls back if it raises.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        connector_factory: ConnectorFactory | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.url: URL = self.settings.sqlalchemy_url
        self.backend = self.settings.database_backend
        self._connector_factory = connector_factory or _google_connector
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._engines_built = 0
        self._raw_statements: dict[sa.Select[Any], _RawStatement] = {}

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    # --- engines -----------------------------------------------------------------------------
    @property
    def engine(self) -> AsyncEngine:
        """The engine for the running event loop."""
        return self._state().engine

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            self._forget_closed_loops()
            state = self._states[loop] = self._build_state()
        return state

    def _forget_closed_loops(self) -> None:
        """Drop the engines of loops that have closed (`asyncio.run` per job, seed 001)."""
        for loop in [loop for loop in self._states if loop.is_closed()]:
            self._states.pop(loop).engine.sync_engine.dispose(close=False)

    def _build_state(self) -> _LoopState:
        # The first loop (the app's, the CLI's, the test session's) gets the connection pool.
        # Further loops are typically short-lived (`asyncio.run` per job, a worker thread):
        # their engines open a connection per session and close it after, so nothing they
        # opened outlives them.
        engine = self._create_engine(pooled=self._engines_built == 0)
        self._engines_built += 1
        writer = engine
        if self.backend is DatabaseBackend.SQLITE:
            writer = engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        return _LoopState(
            engine=engine,
            read_sessions=async_sessionmaker(
                engine, expire_on_commit=False, sync_session_class=SaascoreSession
            ),
            write_sessions=async_sessionmaker(
                writer, expire_on_commit=False, sync_session_class=SaascoreSession
            ),
        )

    def _create_engine(self, *, pooled: bool = True, statement_timeout: bool = True) -> AsyncEngine:
        settings = self.settings
        extra: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
        if self.backend is DatabaseBackend.SQLITE:
            database = self.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                from pathlib import Path

                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(
                self.url,
                echo=settings.sql_echo,
                connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
                **extra,
            )
            _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
            return engine

        options: dict[str, Any] = {"echo": settings.sql_echo, **extra}
        if pooled:
            options.update(
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout,
                pool_recycle=settings.db_pool_recycle,
                pool_pre_ping=settings.db_pool_pre_ping,
                # The most recently used connection first: the few that a light load needs
                # stay warm (their prepared statements and plans), the rest can time out.
                pool_use_lifo=True,
            )
        server_settings = {"application_name": settings.service_name}
        if settings.database_schema:
            server_settings["search_path"] = settings.database_schema
        timeouts = self._timeouts(server_settings, bounded=statement_timeout)
        if settings.use_cloud_sql_connector:
            options["async_creator"] = self._cloud_sql_creator(server_settings, timeouts)
        else:
            options["connect_args"] = {
                "server_settings": server_settings,
                "prepared_statement_cache_size": PREPARED_STATEMENTS,
                **timeouts,
            }
        engine = create_async_engine(self.url, **options)
        event.listen(engine.sync_engine, "handle_error", _on_statement_timeout)
        return engine

    def _timeouts(self, server_settings: dict[str, str], *, bounded: bool) -> dict[str, Any]:
        """asyncpg's connect `timeout` and `command_timeout`, and the server's
        `statement_timeout` (in `server_settings`). The server cancels a slow statement first
        (`QueryCanceledError`, the connection stays usable); the client gives up a few seconds
        later, for a server that stopped answering altogether."""
        settings = self.settings
        timeouts: dict[str, Any] = {"timeout": settings.db_connect_timeout}
        if bounded and settings.db_statement_timeout > 0:
            server_settings["statement_timeout"] = str(int(settings.db_statement_timeout * 1000))
            timeouts["command_timeout"] = settings.db_statement_timeout + STATEMENT_GRACE_SECONDS
        else:
            server_settings["statement_timeout"] = "0"
        return timeouts

    @asynccontextmanager
    async def unbounded_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of its own with no statement timeout, for work that may rightly take
        long (migrations). On SQLite, an ordinary connection."""
        if self.backend is DatabaseBackend.SQLITE:
            async with self.engine.connect() as connection:
                yield connection
            return
        engine = self._create_engine(pooled=False, statement_timeout=False)
        try:
            async with engine.connect() as connection:
                yield connection
        finally:
            await engine.dispose()

    def _cloud_sql_creator(
        self, server_settings: dict[str, str], timeouts: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        settings = self.settings
        instance = settings.cloud_sql_instance
        assert instance is not None  # Settings checks it

        async def creator() -> Any:
            state = self._state()
            if state.connector is None:
                state.connector = await self._connector_factory()
            return await state.connector.connect_async(
                instance,
                "asyncpg",
                user=settings.database_user,
                password=settings.database_password,
                db=settings.database_name or "postgres",
                ip_type=settings.cloud_sql_ip_type.lower(),
                server_settings=server_settings,
                **timeouts,
            )

        return creator

    # --- sessions ----------------------------------------------------------------------------
    @asynccontextmanager
    async def session(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """A session; the caller commits. `readonly=True` skips SQLite's write lock."""
        state = self._state()
        maker = state.read_sessions if readonly else state.write_sessions
        async with maker() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed when the block ends, rolled back on error."""
        async with self.session() as session, session.begin():
            yield session

    @asynccontextmanager
    async def scope(
        self, session: AsyncSession | None, *, readonly: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """The caller's session as it is (the caller commits), or a new transaction of our own.

        Services take an optional session: inside a request they join its unit of work;
        called on their own (the facade, scripts, the CLI) they commit their work themselves.
        `readonly=True` is for reads: on SQLite they then do not queue for the write lock.
        """
        if session is not None:
            yield session
        elif readonly:
            async with self.session(readonly=True) as own:
                yield own
        else:
            async with self.transaction() as own:
                yield own

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """The asyncpg connection under a pooled one, for the few statements that SQLAlchemy
        would only slow down (PostgreSQL only). Its transaction is the caller's to manage.

        The connection is taken from the pool as it is, with no SQLAlchemy `Connection` around
        it: half the cost of `engine.connect()` on the hot paths that use it (authentication,
        recording usage). A connection lost in use is treated as SQLAlchemy treats a
        disconnect: it is discarded with the whole pool (after a failover every pooled
        connection is dead), and `DatabaseUnavailable` is raised; the next call connects
        afresh. A connection left by an exception or a cancellation, or left inside a
        transaction, is discarded too: back in the pool, the next user's work could nest inside
        a transaction that never commits."""
        import asyncpg

        engine = self.engine
        try:
            pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
        except Exception as exc:  # refused, timed out, or the pool had none to give
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        driver = pooled.driver_connection
        assert driver is not None
        try:
            yield driver
        except (
            OSError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.CannotConnectNowError,
        ) as exc:
            if isinstance(exc, TimeoutError):  # silent: closing it politely would wait too
                driver.terminate()
            await greenlet_spawn(pooled.invalidate, exc)
            if isinstance(exc, asyncpg.InterfaceError) and not driver.is_closed():
                raise  # a misuse, not a lost connection
            await engine.dispose()
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        except (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError) as exc:
            # The server's statement_timeout (or lock_timeout): it answers, but too slowly.
            await greenlet_spawn(pooled.invalidate, exc)
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        except BaseException as exc:
            # Cancelled or failed mid-statement: the server may still be inside a
            # transaction the driver has not heard of. Never hand that back to the pool.
            await greenlet_spawn(pooled.invalidate, exc)
            raise
        if driver.is_in_transaction():  # left open by its user: the same
            await greenlet_spawn(pooled.invalidate)
        else:
            await greenlet_spawn(pooled.close)

    async def read_row(self, query: sa.Select[Any], parameters: Mapping[str, Any]) -> Any | None:
        """The first row of `query` (attributes named as its columns), read outside any
        transaction in one round trip; None when there is none.

        On PostgreSQL the statement is compiled once and run on the raw driver, and each
        value goes through its column type's result processing, so the row holds what
        SQLAlchemy would have returned: a fraction of the CPU of `connection.execute`, for the
        reads every request makes (authentication). On SQLite it is an ordinary execute."""
        if self.backend is DatabaseBackend.SQLITE:
            async with self.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                return (await autocommit.execute(query, dict(parameters))).first()
        statement = self._raw_statements.get(query)
        if statement is None:
            statement = self._raw_statements[query] = _RawStatement.compile(
                query, self.engine.dialect
            )
        async with self.driver() as driver:
            record = await driver.fetchrow(statement.sql, *statement.arguments(parameters))
        return None if record is None else statement.row(record)

    async def ping(self, timeout: float = 5.0) -> None:
        """Run `SELECT 1`; raise `DatabaseUnavailable` with the reason if it fails."""
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc

    async def dispose(self) -> None:
        """Close the connections of the running loop's engine (and forget the others)."""
        loop = asyncio.get_running_loop()
        states, self._states = self._states, {}
        for owner, state in states.items():
            if owner is loop:
                await state.engine.dispose()
                if state.connector is not None:
                    await state.connector.close_async()
            else:
                state.engine.sync_engine.dispose(close=False)


def _on_statement_timeout(context: sa.engine.ExceptionContext) -> None:
    """A statement that the client gave up on (asyncpg's `command_timeout`): the server
    stopped answering. Drop the connection at once, as a disconnect (with its pool): a polite
    close or a rollback on it would wait as long again."""
    if not isinstance(context.original_exception, TimeoutError):
        return
    connection = context.connection
    if connection is not None and not connection.invalidated:
        driver = connection.connection.driver_connection
        if driver is not None:
            driver.terminate()
    context.is_disconnect = True


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so that BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def describe_connection_error(exc: BaseException) -> str:
    """One line saying why the database could not be reached, without a traceback."""
    if isinstance(exc, TimeoutError | sa.exc.TimeoutError) or is_timeout(exc):
        return "the database did not answer in time"
    root: BaseException = exc
    while isinstance(root, sa.exc.StatementError) and root.orig is not None:
        root = root.orig
    while root.__cause__ is not None and not str(root).strip():
        root = root.__cause__
    text = " ".join(str(root).split()) or type(root).__name__
    return f"cannot reach the database: {text}"


#: SQLSTATEs of a statement the server ended for taking too long: `query_canceled` (its
#: statement_timeout) and `lock_not_available` (its lock_timeout).
TIMEOUT_SQLSTATES = frozenset({"57014", "55P03"})


def is_timeout(exc: BaseException) -> bool:
    """Whether `exc` (a driver's error, or SQLAlchemy's around one) means the database took too
    long: a server-side statement or lock timeout, or SQLite's busy timeout ("database is
    locked")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in TIMEOUT_SQLSTATES:
            return True
        if type(current).__name__ == "OperationalError" and "database is locked" in str(current):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


#: SQLSTATE class of PostgreSQL's data exceptions: out of range, division by zero, ...
_DATA_EXCEPTION_CLASS = "22"

#: How many low bits `exact_sum` sums apart from the high ones.
_LOW_BITS = 32


def is_arithmetic_error(exc: BaseException) -> bool:
    """Whether `exc` (a driver's error, or SQLAlchemy's around one) is a statement's data or
    arithmetic error (PostgreSQL's SQLSTATE class 22, SQLite's "integer overflow"): a bug
    to fix, never a database that is unavailable, although SQLite raises it as an
    OperationalError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.DataError):
            return True
        if str(getattr(current, "sqlstate", None) or "").startswith(_DATA_EXCEPTION_CLASS):
            return True
        if type(current).__name__ == "OperationalError" and "integer overflow" in str(current):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def exact_sum(
    column: sa.ColumnElement[int] | QueryableAttribute[int],
) -> tuple[sa.ColumnElement[Any], ...]:
    """`SUM(column)` of a BIGINT column, in two sums that cannot overflow: of its high 32
    bits and of its low 32 bits. SQLite's SUM raises "integer overflow" past int64 (and
    its TOTAL is a float); each part here stays within int64 up to 2**31 rows. Select both
    and add them up exactly with `joined_sum`."""
    return (
        sa.func.sum(column.bitwise_rshift(sa.literal(_LOW_BITS, sa.Integer))),
        sa.func.sum(column.bitwise_and((1 << _LOW_BITS) - 1)),
    )


def joined_sum(high: Any, low: Any) -> int:
    """The exact total of the two parts of an `exact_sum` (None: no rows, 0)."""
    return (int(high or 0) << _LOW_BITS) + int(low or 0)


def asyncpg_form(statement: sa.Executable) -> tuple[str, tuple[str, ...]]:
    """`statement` as asyncpg takes it: its PostgreSQL text (`$n` parameters) and its
    parameters' names in that order. Built once by its callers: compiling costs more than
    running."""
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    return str(compiled), tuple(compiled.positiontup or ())


async def driver_in(session: AsyncSession) -> Any | None:
    """The asyncpg connection under `session`'s, once its transaction has begun on
    PostgreSQL: a statement sent on it directly is then part of that transaction, without
    SQLAlchemy's work per statement (its values must be what asyncpg takes). None on
    SQLite, or before the session's first statement has begun the transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not driver.is_in_transaction():
        return None
    return driver
