"""The SSRF guard: webhooks go to public HTTPS servers only.

A tenant chooses the URL that saascore will POST to, from inside the platform's network. Left
unchecked, that is a way to reach what only the platform can reach: the cloud metadata service
(169.254.169.254), the database, an admin port on loopback. So:

- `check_url` refuses, without any network access, a URL that is not absolute HTTPS (http only
  with `allow_private`), holds a space or a control character (C0, C1 or a bidirectional
  override), carries a user name or password, a fragment, no host, is longer than
  2048 characters, or names a non-public IP address (also in the legacy numeric forms such as
  `2130706433` or `0x7f.1`, which resolvers read as IPv4), and returns the URL normalized;
- `resolve_public` resolves a host with the event loop's resolver and refuses it if ANY of its
  addresses is not public: checked at creation and update, and again by the dispatcher before
  each attempt, which then connects to the address it checked (so a name that resolves to a
  public address at creation and to loopback later, DNS rebinding, gets nothing).

`allow_private` (`SAASCORE_WEBHOOKS_ALLOW_PRIVATE`, off by default) lets everything through but
malformed URLs: for tests and for deployments whose receivers live on a private network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit, urlunsplit

from saascore.events.errors import (
    WebhookUrlInvalid,
    WebhookUrlNotHttps,
    WebhookUrlPrivate,
    WebhookUrlTooLong,
    WebhookUrlUnresolvable,
    WebhookUrlUserinfo,
)
from saascore.kit.validation import control_character

__all__ = [
    "MAX_URL_LENGTH",
    "RESOLVE_TIMEOUT",
    "IPAddress",
    "check_public_url",
    "check_url",
    "forbidden_reason",
    "resolve_public",
    "url_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
#: Seconds a resolution may take before the host counts as unresolvable.
RESOLVE_TIMEOUT = 5.0

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
#: Cloud metadata services: AWS, GCP, Azure and others (IPv4 and AWS's IPv6), Alibaba.
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook may not be sent to `address` ("loopback", "private", "metadata", ...),
    or None for a public address. An IPv6 address that carries an IPv4 one (IPv4-mapped,
    6to4, NAT64) is judged by the IPv4 address; Teredo is refused outright."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return "teredo"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return forbidden_reason(embedded)
        if address.is_site_local:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address in _METADATA:
        return "metadata"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared address space"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not public"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refuse_address(address: IPAddress, *, allow_private: bool) -> None:
    reason = forbidden_reason(address)
    if reason is not None and not allow_private:
        raise WebhookUrlPrivate(
            f"webhooks are not sent to {reason} addresses ({address})",
            field="url",
            address=str(address),
            reason=reason,
        )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """`url` normalized (scheme and host in lower case, no default port removed, nothing else
    changed), or a `WebhookUrlInvalid` (one of its subclasses) saying why it is refused.

    No network access: a host name is checked by `resolve_public`."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlTooLong(
            f"a webhook URL has at most {MAX_URL_LENGTH} characters", field="url"
        )
    # The C1 controls and the bidirectional overrides too (`control_character`): a URL shown
    # in the portal and the audit log must read as what it is.
    if " " in url or control_character(url) is not None:
        raise WebhookUrlInvalid("a webhook URL has no spaces or control characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlInvalid(f"not a valid URL: {exc}", field="url") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise WebhookUrlInvalid("a webhook URL is absolute: https://host/path", field="url")
    if scheme != "https" and not (scheme == "http" and allow_private):
        raise WebhookUrlNotHttps("webhook URLs use https", field="url", scheme=scheme)
    if "@" in parts.netloc:
        raise WebhookUrlUserinfo("a webhook URL carries no user name or password", field="url")
    if "#" in url:
        raise WebhookUrlInvalid("a webhook URL has no fragment (#...)", field="url")
    host = parts.hostname or ""
    if not host:
        raise WebhookUrlInvalid("a webhook URL names a host", field="url")
    if port == 0:
        raise WebhookUrlInvalid("port 0 is not a port", field="url")
    if parts.netloc.startswith("["):
        if "%" in host:
            raise WebhookUrlInvalid("an IPv6 address with a zone is not public", field="url")
        address = _ip_literal(host)
        if not isinstance(address, ipaddress.IPv6Address):
            raise WebhookUrlInvalid("not a valid IPv6 address", field="url")
        _refuse_address(address, allow_private=allow_private)
        netloc = f"[{address.compressed}]"
    else:
        host = _check_host(host, allow_private=allow_private)
        netloc = host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def _check_host(host: str, *, allow_private: bool) -> str:
    """A host name or an IPv4 address, checked and in ASCII lower case."""
    address = _ip_literal(host)
    if address is not None:
        _refuse_address(address, allow_private=allow_private)
        return address.compressed
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:  # `127.1`, `2130706433`, `0x7f.0.0.1`: resolvers read these as IPv4 addresses
        raise WebhookUrlInvalid(
            "write an IPv4 address as four decimal numbers (a.b.c.d)", field="url"
        )
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise WebhookUrlInvalid("not a valid host name", field="url") from None
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise WebhookUrlInvalid("not a valid host name", field="url")
    if labels[-1] == "localhost" and not allow_private:  # RFC 6761: always loopback
        raise WebhookUrlPrivate(
            "webhooks are not sent to loopback addresses (localhost)",
            field="url",
            address=ascii_host,
            reason="loopback",
        )
    return ascii_host


def url_target(url: str) -> tuple[str, int]:
    """The host (without brackets) and port a checked URL connects to."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


async def resolve_public(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to (with the event loop's resolver), in the resolver's
    order, without repeats; `WebhookUrlUnresolvable` if there are none, `WebhookUrlPrivate` if
    ANY of them is not public (unless `allow_private`). Connect to one of these, not to the
    name again: a second resolution may answer differently."""
    host = host.removeprefix("[").removesuffix("]")
    literal = _ip_literal(host)
    if literal is not None:
        _refuse_address(literal, allow_private=allow_private)
        return [literal.compressed]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise WebhookUrlUnresolvable(
            f"{host} does not resolve: {exc}", field="url", host=host
        ) from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        _refuse_address(address, allow_private=allow_private)
        if address.compressed not in addresses:
            addresses.append(address.compressed)
    if not addresses:
        raise WebhookUrlUnresolvable(f"{host} does not resolve", field="url", host=host)
    return addresses


async def check_public_url(url: str, *, allow_private: bool) -> str:
    """`check_url`, then `resolve_public` on its host: what creating or changing an endpoint
    runs. Returns the normalized URL."""
    checked = check_url(url, allow_private=allow_private)
    host, port = url_target(checked)
    await resolve_public(host, port, allow_private=allow_private)
    return checked
