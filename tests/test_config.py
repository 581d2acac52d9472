"""`Settings` from the environment and `.env`, and `load_settings`' one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from saascore import config
from saascore.config import DatabaseBackend, Settings, load_settings
from saascore.kit.errors import ConfigurationError

#: Variables (and prefixes) Settings reads; names are case-insensitive.
PREFIXES = ("DATABASE_", "DB_", "SAASCORE_", "CLOUD_SQL_", "USE_CLOUD_SQL_CONNECTOR")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of this machine and no stray `.env` may reach these tests."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class TestDefaults:
    def test_no_database_configured_means_embedded_sqlite(self) -> None:
        settings = Settings()
        assert settings.is_embedded
        assert settings.database_backend is DatabaseBackend.SQLITE
        assert settings.sqlite_path == Path(".saascore/saascore.db")
        assert (
            settings.sqlalchemy_url.render_as_string()
            == "sqlite+aiosqlite:///.saascore/saascore.db"
        )
        assert settings.should_auto_migrate is True

    def test_an_empty_database_url_means_embedded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "  ")
        settings = Settings()
        assert settings.database_url is None
        assert settings.is_embedded

    def test_a_configured_server_is_not_migrated_unless_asked(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/app")
        assert Settings().should_auto_migrate is False
        monkeypatch.setenv("SAASCORE_AUTO_MIGRATE", "true")
        assert Settings().should_auto_migrate is True

    def test_embedded_database_can_opt_out_of_migrating(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SAASCORE_AUTO_MIGRATE", "false")
        assert Settings().should_auto_migrate is False


class TestDatabaseVariables:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("postgresql://u:p@db:5433/app", "postgresql+asyncpg://u:p@db:5433/app"),
            ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
            ("postgresql+psycopg2://u@db/app", "postgresql+asyncpg://u@db/app"),
            ("postgresql+psycopg://u@db/app", "postgresql+asyncpg://u@db/app"),
            ("sqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
            ("sqlite+aiosqlite:////abs/app.db", "sqlite+aiosqlite:////abs/app.db"),
        ],
    )
    def test_database_url(self, monkeypatch: pytest.MonkeyPatch, raw: str, expected: str) -> None:
        monkeypatch.setenv("DATABASE_URL", raw)
        settings = Settings()
        assert settings.sqlalchemy_url.render_as_string(hide_password=False) == expected
        assert not settings.is_embedded

    def test_postgres_scheme_alias(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgres://u@db/app")
        url = load_settings().sqlalchemy_url
        assert url.render_as_string() == "postgresql+asyncpg://u@db/app"

    def test_database_url_backend(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/app")
        assert Settings().database_backend is DatabaseBackend.POSTGRESQL
        monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
        assert Settings().database_backend is DatabaseBackend.SQLITE

    def test_host_port_user_password_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in {
            "DATABASE_HOST": "db.internal",
            "DATABASE_PORT": "6432",
            "DATABASE_USER": "app",
            "DATABASE_PASSWORD": "s3cret",
            "DATABASE_NAME": "saas",
        }.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        url = settings.sqlalchemy_url
        assert url.drivername == "postgresql+asyncpg"
        assert (url.host, url.port, url.username, url.password, url.database) == (
            "db.internal",
            6432,
            "app",
            "s3cret",
            "saas",
        )
        assert "s3cret" not in repr(settings)
        assert not settings.is_embedded
        assert settings.should_auto_migrate is False

    def test_database_url_wins_over_host(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_HOST", "ignored")
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@chosen/app")
        assert Settings().sqlalchemy_url.host == "chosen"

    def test_cloud_sql_connector(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "true")
        monkeypatch.setenv("CLOUD_SQL_INSTANCE", "proj:europe-west1:main")
        monkeypatch.setenv("CLOUD_SQL_IP_TYPE", "PRIVATE")
        monkeypatch.setenv("DATABASE_USER", "svc")
        monkeypatch.setenv("DATABASE_NAME", "saas")
        settings = Settings()
        assert settings.use_cloud_sql_connector is True
        assert settings.cloud_sql_instance == "proj:europe-west1:main"
        assert settings.cloud_sql_ip_type == "PRIVATE"
        assert settings.database_backend is DatabaseBackend.POSTGRESQL
        url = settings.sqlalchemy_url
        assert (url.drivername, url.username, url.database, url.host) == (
            "postgresql+asyncpg",
            "svc",
            "saas",
            None,
        )
        assert not settings.is_embedded

    def test_cloud_sql_ip_type_defaults_to_public(self) -> None:
        assert Settings().cloud_sql_ip_type == "PUBLIC"

    def test_pool_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DB_POOL_SIZE", "12")
        monkeypatch.setenv("DB_MAX_OVERFLOW", "0")
        monkeypatch.setenv("DB_POOL_TIMEOUT", "2.5")
        monkeypatch.setenv("DB_POOL_RECYCLE", "-1")
        settings = Settings()
        assert (
            settings.db_pool_size,
            settings.db_max_overflow,
            settings.db_pool_timeout,
            settings.db_pool_recycle,
        ) == (12, 0, 2.5, -1)

    def test_pool_defaults(self) -> None:
        settings = Settings()
        assert (
            settings.db_pool_size,
            settings.db_max_overflow,
            settings.db_pool_timeout,
            settings.db_pool_recycle,
        ) == (5, 10, 5.0, 1800)

    def test_lower_case_names_work_too(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("db_pool_size", "7")
        assert Settings().db_pool_size == 7


class TestPrefixedVariables:
    def test_saascore_variables(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("SAASCORE_AUTO_MIGRATE", "false")
        monkeypatch.setenv("SAASCORE_DATA_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("SAASCORE_DEFAULT_PLAN", "pro")
        monkeypatch.setenv("SAASCORE_DATABASE_SCHEMA", "tenant_a")
        monkeypatch.setenv("SAASCORE_ENVIRONMENT", "production")
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/app")  # a schema needs PostgreSQL
        settings = Settings()
        assert settings.auto_migrate is False
        assert settings.data_dir == tmp_path / "state"
        assert settings.sqlite_path == tmp_path / "state" / "saascore.db"
        assert settings.default_plan == "pro"
        assert settings.database_schema == "tenant_a"
        assert settings.environment == "production"

    @pytest.mark.parametrize(
        ("name", "value", "field", "expected"),
        [
            ("SAASCORE_SERVICE_NAME", "billing-core", "service_name", "billing-core"),
            ("SAASCORE_HOST", "10.1.2.3", "host", "10.1.2.3"),
            ("SAASCORE_PORT", "9000", "port", 9000),
            ("SAASCORE_LOG_LEVEL", "debug", "log_level", "debug"),
            ("SAASCORE_SQL_ECHO", "true", "sql_echo", True),
            ("SAASCORE_SQLITE_BUSY_TIMEOUT_MS", "500", "sqlite_busy_timeout_ms", 500),
            ("SAASCORE_ENVIRONMENT", "test", "environment", "test"),
        ],
    )
    def test_other_saascore_variables(
        self,
        monkeypatch: pytest.MonkeyPatch,
        name: str,
        value: str,
        field: str,
        expected: object,
    ) -> None:
        monkeypatch.setenv(name, value)
        assert getattr(Settings(), field) == expected

    def test_unprefixed_names_are_not_read_for_saascore_settings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEFAULT_PLAN", "pro")
        assert Settings().default_plan == "free"

    def test_cors_origins_as_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SAASCORE_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
        assert Settings().cors_origins == ["https://a.example", "https://b.example"]

    def test_cors_origins_as_a_comma_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SAASCORE_CORS_ORIGINS", "https://a.example, https://b.example,")
        assert load_settings().cors_origins == ["https://a.example", "https://b.example"]

    def test_cors_origins_comma_list_as_a_value(self) -> None:
        settings = Settings(cors_origins="https://a.example, https://b.example")
        assert settings.cors_origins == ["https://a.example", "https://b.example"]


class TestDotEnv:
    def test_read_from_the_working_directory(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text(
            "DATABASE_URL=postgresql://u@from-dotenv/app\n"
            "DB_POOL_SIZE=9\n"
            "SAASCORE_DEFAULT_PLAN=starter\n",
            encoding="utf-8",
        )
        settings = Settings()
        assert settings.sqlalchemy_url.host == "from-dotenv"
        assert settings.db_pool_size == 9
        assert settings.default_plan == "starter"

    def test_the_environment_wins_over_dotenv(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / ".env").write_text("DB_POOL_SIZE=9\n", encoding="utf-8")
        monkeypatch.setenv("DB_POOL_SIZE", "3")
        assert Settings().db_pool_size == 3


class TestErrors:
    @pytest.mark.parametrize(
        ("name", "value", "words"),
        [
            ("DB_POOL_SIZE", "abc", "valid integer"),
            ("DB_POOL_SIZE", "0", "greater than or equal to 1"),
            ("DB_MAX_OVERFLOW", "-1", "greater than or equal to 0"),
            ("DB_POOL_TIMEOUT", "0", "greater than 0"),
            ("DATABASE_PORT", "0", "greater than or equal to 1"),
            ("DATABASE_PORT", "70000", "less than or equal to 65535"),
            ("DATABASE_URL", "mysql://x", "'mysql' is not supported"),
            ("DATABASE_URL", "postgresql+pg8000://u@h/d", "'pg8000' is not supported"),
            ("DATABASE_URL", "not a url", "not a database URL"),
            ("CLOUD_SQL_IP_TYPE", "BOGUS", "'PUBLIC', 'PRIVATE' or 'PSC'"),
            ("USE_CLOUD_SQL_CONNECTOR", "maybe", "valid boolean"),
            ("SAASCORE_AUTO_MIGRATE", "perhaps", "valid boolean"),
            ("SAASCORE_DATABASE_SCHEMA", "Bad-Schema", "pattern"),
            ("SAASCORE_PORT", "0", "greater than or equal to 1"),
            ("SAASCORE_CORS_ORIGINS", "[not json", "Expecting value"),
        ],
    )
    def test_bad_value_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
    ) -> None:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigurationError) as info:
            load_settings()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"invalid setting {name}: ")
        assert words in message

    def test_unknown_database_scheme(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "foo://u@h/d")
        with pytest.raises(ConfigurationError, match=r"invalid setting DATABASE_URL: .*'foo'"):
            load_settings()

    def test_cloud_sql_connector_needs_an_instance(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "true")
        with pytest.raises(ConfigurationError) as info:
            load_settings()
        message = str(info.value)
        assert "\n" not in message
        assert "CLOUD_SQL_INSTANCE" in message
        assert "USE_CLOUD_SQL_CONNECTOR" in message

    def test_bad_value_in_dotenv(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("DB_POOL_SIZE=lots\n", encoding="utf-8")
        with pytest.raises(ConfigurationError, match="DB_POOL_SIZE"):
            load_settings()

    def test_overrides_are_validated_too(self) -> None:
        with pytest.raises(ConfigurationError, match="invalid setting DATABASE_PORT"):
            load_settings(database_port=0)

    def test_good_settings_load(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DB_POOL_SIZE", "4")
        assert load_settings().db_pool_size == 4


class TestSecretsAndCombinations:
    def test_a_bad_url_is_reported_without_its_password(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "mysql://u:s3cret@h/db")
        with pytest.raises(ConfigurationError) as info:
            load_settings()
        assert "s3cret" not in str(info.value)
        assert "DATABASE_URL" in str(info.value)

    def test_the_url_and_password_stay_out_of_repr(self) -> None:
        settings = Settings(
            database_url="postgresql://u:s3cret@h/db", database_password="other-secret"
        )
        assert "s3cret" not in repr(settings)
        assert "other-secret" not in repr(settings)

    def test_libpq_sslmode_becomes_asyncpg_ssl(self) -> None:
        url = Settings(database_url="postgresql://u@h/db?sslmode=require").sqlalchemy_url
        assert url.query == {"ssl": "require"}

    def test_a_schema_is_refused_on_sqlite(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SAASCORE_DATABASE_SCHEMA", "tenant_a")
        with pytest.raises(ConfigurationError, match="PostgreSQL only"):
            load_settings()

    def test_cloud_sql_does_not_mix_with_a_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("USE_CLOUD_SQL_CONNECTOR", "true")
        monkeypatch.setenv("CLOUD_SQL_INSTANCE", "p:r:i")
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
        with pytest.raises(ConfigurationError, match="not DATABASE_URL"):
            load_settings()


class TestMetricsToken:
    @pytest.mark.parametrize("blank", [" " * 16, "\t" * 20, "  short-token   "])
    def test_a_blank_or_padded_short_token_is_refused(self, blank: str) -> None:
        with pytest.raises(ValidationError):
            Settings(_env_file=None, metrics_token=blank)

    def test_a_token_is_kept_without_its_padding(self) -> None:
        settings = Settings(_env_file=None, metrics_token="  a-long-enough-token  ")
        assert settings.metrics_token is not None
        assert settings.metrics_token.get_secret_value() == "a-long-enough-token"


class TestSeedAliases:
    """Seed 002's `DB_*` variables are read where the saascore variable is not set, warned once."""

    @pytest.fixture(autouse=True)
    def fresh_warnings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(config, "_warned", set())

    @staticmethod
    def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "saascore.config"]

    def test_the_parts_are_read_as_database_variables(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        for name, value in {
            "DB_HOST": "db.internal",
            "DB_PORT": "5433",
            "DB_NAME": "ai_descriptions",
            "DB_USER": "app",
            "DB_PASSWORD": "s3cret",
        }.items():
            monkeypatch.setenv(name, value)
        settings = load_settings()
        assert settings.database_host == "db.internal"
        assert settings.database_port == 5433
        assert (
            settings.sqlalchemy_url.render_as_string(hide_password=False)
            == "postgresql+asyncpg://app:s3cret@db.internal:5433/ai_descriptions"
        )
        assert self.warnings(caplog) == [
            f"{alias} is read as {name}; rename it" for alias, name in config.SEED_ALIASES.items()
        ]

    def test_each_alias_is_warned_about_once(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("DB_HOST", "db.internal")
        load_settings()
        load_settings()
        assert self.warnings(caplog) == ["DB_HOST is read as DATABASE_HOST; rename it"]

    def test_the_saascore_variable_wins(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("DB_HOST", "old.internal")
        monkeypatch.setenv("DATABASE_HOST", "new.internal")
        assert load_settings().database_host == "new.internal"
        assert self.warnings(caplog) == [
            "DB_HOST is ignored: DATABASE_HOST is set and wins; remove DB_HOST"
        ]

    def test_an_alias_in_dotenv_is_read(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("DB_HOST=from-file\nDB_NAME=app\n")
        settings = load_settings()
        assert settings.sqlalchemy_url.host == "from-file"
        assert settings.sqlalchemy_url.database == "app"

    def test_the_saascore_variable_in_dotenv_wins_over_an_alias_in_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / ".env").write_text("DATABASE_HOST=new.internal\n")
        monkeypatch.setenv("DB_HOST", "old.internal")
        assert load_settings().database_host == "new.internal"

    def test_seed_002s_whole_block_keeps_its_database_url(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        block = {
            "DATABASE_URL": "postgresql://user:password@localhost:5432/ai_descriptions",
            "DB_TYPE": "postgresql",
            "DB_HOST": "localhost",
            "DB_PORT": "5432",
            "DB_NAME": "ai_descriptions",
            "DB_USER": "postgres",
            "DB_PASSWORD": "your_password",
        }
        for name, value in block.items():
            monkeypatch.setenv(name, value)
        url = load_settings().sqlalchemy_url
        assert url.render_as_string(hide_password=False) == (
            "postgresql+asyncpg://user:password@localhost:5432/ai_descriptions"
        )
        assert "DB_TYPE is ignored: DATABASE_URL is set and wins; remove it" in self.warnings(
            caplog
        )

    def test_db_type_sqlite_with_a_name_is_that_file(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("DB_TYPE", "sqlite")
        monkeypatch.setenv("DB_NAME", "data/app.db")
        monkeypatch.setenv("DB_HOST", "ignored.internal")
        settings = load_settings()
        assert settings.database_backend is DatabaseBackend.SQLITE
        assert settings.sqlalchemy_url.render_as_string() == "sqlite+aiosqlite:///data/app.db"
        assert self.warnings(caplog) == [
            "DB_HOST is ignored with DB_TYPE=sqlite; remove it",
            "DB_TYPE=sqlite is read as DATABASE_URL=sqlite:///data/app.db; remove it",
        ]

    def test_db_type_sqlite_alone_is_the_embedded_database(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DB_TYPE", "SQLite")
        settings = load_settings()
        assert settings.is_embedded
        assert settings.database_backend is DatabaseBackend.SQLITE

    def test_db_type_postgresql_alone_is_the_default_server(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DB_TYPE", "postgres")
        settings = load_settings()
        assert settings.database_backend is DatabaseBackend.POSTGRESQL
        assert settings.sqlalchemy_url.render_as_string() == (
            "postgresql+asyncpg://postgres@localhost:5432/postgres"
        )

    def test_an_unknown_db_type_is_one_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DB_TYPE", "mysql")
        with pytest.raises(ConfigurationError) as error:
            load_settings()
        assert str(error.value) == (
            "invalid setting DB_TYPE: use postgresql or sqlite (got 'mysql')"
        )

    def test_a_bad_alias_value_names_the_alias(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DB_PORT", "abc")
        with pytest.raises(ConfigurationError, match=r"^invalid setting DB_PORT: .*'abc'"):
            load_settings()
