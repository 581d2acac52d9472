"""`saascore keys`: create, list and revoke API keys, an organisation's or the operators'.

    saascore keys create --operator --name deploy-bot --expires 90d
    saascore keys create --org acme --scopes usage:write,usage:read --name ingest [--test]
    saascore keys list --org acme
    saascore keys revoke 0193a1c3-0a10-7b6e-8c21-5f3e9d0a1b22

A new key is printed once, alone on stdout (so `KEY=$(saascore keys create ...)` works): only
its SHA-256 is stored.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import sqlalchemy as sa
import typer

from saascore.cli._output import Column, IdsOption, JsonOption, output_format, print_rows
from saascore.cli._run import EXIT_USAGE, cli_actor, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.identity import ApiKeyNotFound, UserNotFound, normalize_email
from saascore.kit.errors import InvalidInput
from saascore.kit.validation import checked_instant
from saascore.models import ApiKey, ApiKeyEnvironment, OperatorKey, User

__all__ = ["app"]

app = typer.Typer(
    name="keys",
    help="API keys of organisations and operators: create, list, revoke.",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^(\d{1,6})([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_PAGE = 200

OrgOption = Annotated[
    str | None,
    typer.Option("--org", help="The organisation: its id or external id.", show_default=False),
]
OperatorOption = Annotated[
    bool, typer.Option("--operator", help="An operator key (the platform's staff, /v1/admin).")
]


_NOT_AN_EXPIRY = "give a date or time from 1970 to 9998, or a duration such as 90d"


def _expiry(text: str | None) -> datetime | None:
    """`90d`, `12h`, `30m` from now, or an ISO date or time (UTC unless it names a zone)."""
    if text is None:
        return None
    duration = _DURATION.match(text.strip())
    try:
        if duration:
            amount, unit = duration.groups()
            moment = datetime.now(UTC) + timedelta(**{_UNITS[unit]: int(amount)})
        else:
            moment = datetime.fromisoformat(text.strip())
            moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return checked_instant(moment, field="--expires")
    except (ValueError, OverflowError, InvalidInput):
        fail(f"--expires {text!r}: {_NOT_AN_EXPIRY}", EXIT_USAGE)


def _key_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        fail(f"{text!r} is not a key id (a UUID, as 'saascore keys list' shows)", EXIT_USAGE)


def _owner(org: str | None, operator: bool, *, required: bool = True) -> None:
    if org is not None and operator:
        fail("--org and --operator exclude each other", EXIT_USAGE)
    if required and org is None and not operator:
        fail("name the key's owner: --org ID or --operator", EXIT_USAGE)


def _when(moment: datetime | None, default: str = "-") -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else default


@dataclass(frozen=True)
class _Created:
    id: uuid.UUID
    prefix: str
    raw: str


@app.command()
@handle_errors
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.", show_default=False)],
    org: OrgOption = None,
    operator: OperatorOption = False,
    scopes: Annotated[
        str,
        typer.Option(help="Comma-separated: usage:read, usage:write, billing:read, ..., admin."),
    ] = "usage:write,usage:read",
    test: Annotated[bool, typer.Option("--test", help="A test key (sk_test_...).")] = False,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            metavar="EMAIL",
            help="The user the key acts for (held to that user's role).",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            help="When it stops working: 90d, 12h, 2027-01-01 or 2027-01-01T12:00 (UTC).",
            show_default="never",
        ),
    ] = None,
) -> None:
    """Create a key and print it, once: only its hash is kept."""
    _owner(org, operator)
    if operator and (test or user is not None):
        fail("--test and --user are for organisation keys", EXIT_USAGE)
    expires_at = _expiry(expires)
    scope_list = [scope.strip() for scope in scopes.split(",") if scope.strip()]

    async def work(core: Saascore) -> _Created:
        if operator:
            op_key, raw = await core.api_keys.create_operator_key(name=name, expires_at=expires_at)
            return _Created(op_key.id, op_key.key_prefix, raw)
        assert org is not None
        organization = await core.orgs.resolve(org)
        user_id = await _user_id(core, organization.id, user) if user is not None else None
        key, raw = await core.api_keys.create(
            organization.id,
            name=name,
            scopes=scope_list,
            user_id=user_id,
            expires_at=expires_at,
            environment=ApiKeyEnvironment.TEST if test else ApiKeyEnvironment.LIVE,
            actor=cli_actor(),
        )
        return _Created(key.id, key.key_prefix, raw)

    created = run_with_core(load_settings(), work)
    typer.echo(created.raw)
    typer.echo(
        f"created key {created.id} ({created.prefix}...): store it now, it is not shown again",
        err=True,
    )


async def _user_id(core: Saascore, org_id: uuid.UUID, email: str) -> uuid.UUID:
    address = normalize_email(email)
    async with core.database.session(readonly=True) as s:
        user_id = await s.scalar(
            sa.select(User.id).where(User.organization_id == org_id, User.email == address)
        )
    if user_id is None:
        raise UserNotFound(f"no user {address} in this organisation", email=address)
    return user_id


def _never(moment: datetime | None) -> str:
    return _when(moment, "never")


#: An organisation's API key as `keys list` prints it (never the key itself).
KEY_COLUMNS: list[Column[ApiKey]] = [
    Column("id", lambda k: k.id),
    Column("name", lambda k: k.name),
    Column("prefix", lambda k: k.key_prefix, is_id=True),
    Column("scopes", lambda k: list(k.scopes)),
    Column("user_id", lambda k: k.user_id, header="user", is_id=True),
    Column("environment", lambda k: k.environment, in_table=False),
    Column("created_at", lambda k: k.created_at, header="created"),
    Column("expires_at", lambda k: k.expires_at, header="expires", text=_never),
    Column("last_used_at", lambda k: k.last_used_at, header="last used", text=_never),
    Column("revoked_at", lambda k: k.revoked_at, header="revoked"),
]
#: An operator key as `keys list --operator` prints it.
OPERATOR_COLUMNS: list[Column[OperatorKey]] = [
    Column("id", lambda k: k.id),
    Column("name", lambda k: k.name),
    Column("prefix", lambda k: k.key_prefix, is_id=True),
    Column("created_at", lambda k: k.created_at, header="created"),
    Column("expires_at", lambda k: k.expires_at, header="expires", text=_never),
    Column("last_used_at", lambda k: k.last_used_at, header="last used", text=_never),
    Column("revoked_at", lambda k: k.revoked_at, header="revoked"),
]


@app.command("list")
@handle_errors
def list_keys(
    org: OrgOption = None,
    operator: OperatorOption = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """An organisation's keys, or the operators', newest first; never the keys themselves."""
    _owner(org, operator)
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> list[ApiKey] | list[OperatorKey]:
        if operator:
            keys = await core.api_keys.list_operator_keys()
            return [k for k in reversed(keys) if all_keys or k.revoked_at is None]
        assert org is not None
        organization = await core.orgs.resolve(org)
        found: list[ApiKey] = []
        after = None
        while True:
            page = await core.api_keys.list(
                organization.id, include_revoked=all_keys, limit=_PAGE, after=after
            )
            found += page
            if len(page) < _PAGE:
                return found
            after = page[-1].id

    keys = run_with_core(load_settings(), work)
    if operator:
        operator_keys = [k for k in keys if isinstance(k, OperatorKey)]
        print_rows(
            operator_keys, OPERATOR_COLUMNS, output, ids=lambda k: str(k.id), empty="no keys"
        )
    else:
        api_keys = [k for k in keys if isinstance(k, ApiKey)]
        print_rows(api_keys, KEY_COLUMNS, output, ids=lambda k: str(k.id), empty="no keys")


@app.command()
@handle_errors
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id.", show_default=False)],
    org: OrgOption = None,
    operator: OperatorOption = False,
) -> None:
    """Revoke a key: it stops working at once. Revoking a revoked key changes nothing."""
    _owner(org, operator, required=False)
    identifier = _key_id(key_id)

    async def work(core: Saascore) -> tuple[str, datetime | None]:
        if operator:
            op_key = await core.api_keys.revoke_operator_key(identifier)
            return op_key.key_prefix, op_key.revoked_at
        if org is not None:
            organization_id = (await core.orgs.resolve(org)).id
        else:  # whoever's it is: an organisation's, else an operator's
            found = await core.api_keys.organization_of(identifier)
            if found is None:
                try:
                    op_key = await core.api_keys.revoke_operator_key(identifier)
                except ApiKeyNotFound:
                    raise ApiKeyNotFound(f"no key {identifier}", api_key=str(identifier)) from None
                return op_key.key_prefix, op_key.revoked_at
            organization_id = found
        key = await core.api_keys.revoke(organization_id, identifier, actor=cli_actor())
        return key.key_prefix, key.revoked_at

    prefix, revoked_at = run_with_core(load_settings(), work)
    typer.echo(f"key {identifier} ({prefix}...) revoked at {_when(revoked_at)} UTC")
