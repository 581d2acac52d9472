"""The SSRF guard: every class of address that is not public is refused (also in its IPv6
disguises), every malformed URL has its own code, and `allow_private` lets addresses through
but never malformed URLs."""

from __future__ import annotations

import ipaddress

import pytest

from saascore.events.errors import (
    WebhookUrlInvalid,
    WebhookUrlNotHttps,
    WebhookUrlPrivate,
    WebhookUrlTooLong,
    WebhookUrlUnresolvable,
    WebhookUrlUserinfo,
)
from saascore.events.guard import (
    check_public_url,
    check_url,
    forbidden_reason,
    resolve_public,
    url_target,
)

#: Every class of address a webhook may not go to, with the reason the guard gives.
FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 (an address to refuse, not to bind)
    ("::", "unspecified"),
    ("10.0.0.1", "private"),
    ("172.16.4.2", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("100.64.0.1", "shared address space"),
    ("100.127.255.254", "shared address space"),
    ("240.0.0.1", "private"),  # reserved, which Python counts as private
    ("255.255.255.255", "private"),
    ("192.0.2.10", "private"),  # documentation (TEST-NET-1)
    ("198.18.0.1", "private"),  # benchmarking
    ("fec0::1", "site-local"),
    ("2001:db8::1", "private"),  # documentation
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    # IPv6 forms of IPv4 addresses are judged by the IPv4 address
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "metadata"),  # 6to4 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
]

PUBLIC = ["8.8.8.8", "93.184.215.14", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"]


def bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class TestAddresses:
    @pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
    def test_forbidden(self, address: str, reason: str) -> None:
        assert forbidden_reason(ipaddress.ip_address(address)) == reason

    @pytest.mark.parametrize("address", PUBLIC)
    def test_public(self, address: str) -> None:
        assert forbidden_reason(ipaddress.ip_address(address)) is None

    @pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
    def test_refused_in_a_url(self, address: str, reason: str) -> None:
        with pytest.raises(WebhookUrlPrivate) as refused:
            check_url(f"https://{bracketed(address)}/hook", allow_private=False)
        assert refused.value.code == "webhook_url_private"
        assert refused.value.details["reason"] == reason

    @pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
    def test_allowed_with_the_private_setting(self, address: str, reason: str) -> None:
        url = f"https://{bracketed(address)}/hook"
        assert check_url(url, allow_private=True).startswith("https://")

    @pytest.mark.parametrize("address", PUBLIC)
    def test_public_in_a_url(self, address: str) -> None:
        check_url(f"https://{bracketed(address)}/hook", allow_private=False)

    @pytest.mark.parametrize(
        "host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0x7f.0.0.1", "10.1"]
    )
    def test_legacy_numeric_forms_are_not_read_as_names(self, host: str) -> None:
        with pytest.raises(WebhookUrlInvalid) as refused:
            check_url(f"https://{host}/", allow_private=False)
        assert refused.value.code == "webhook_url_invalid"


class TestSyntax:
    @pytest.mark.parametrize(
        ("url", "error"),
        [
            ("http://8.8.8.8/hook", WebhookUrlNotHttps),
            ("ftp://8.8.8.8/hook", WebhookUrlNotHttps),
            ("javascript:alert(1)", WebhookUrlInvalid),
            ("file:///etc/passwd", WebhookUrlInvalid),
            ("gopher://8.8.8.8:70/", WebhookUrlNotHttps),
            ("https://user:secret@8.8.8.8/hook", WebhookUrlUserinfo),
            ("https://user@8.8.8.8/hook", WebhookUrlUserinfo),
            ("https://8.8.8.8@127.0.0.1/hook", WebhookUrlUserinfo),
            ("https://8.8.8.8/" + "a" * 2040, WebhookUrlTooLong),
            ("https:///hook", WebhookUrlInvalid),
            ("https://:443/hook", WebhookUrlInvalid),
            ("/relative/hook", WebhookUrlInvalid),
            ("hooks.example.com/x", WebhookUrlInvalid),
            ("https://8.8.8.8/hook#part", WebhookUrlInvalid),
            ("https://8.8.8.8/hook#", WebhookUrlInvalid),
            ("https://8.8.8.8/ho ok", WebhookUrlInvalid),
            ("https://8.8.8.8/hook\n", WebhookUrlInvalid),
            ("https://8.8.8.8:99999/", WebhookUrlInvalid),
            ("https://8.8.8.8:0/", WebhookUrlInvalid),
            ("https://[::1/", WebhookUrlInvalid),
            ("https://[fe80::1%25eth0]/", WebhookUrlInvalid),
            ("https://exa_mple-.com/", WebhookUrlInvalid),
            ("https://localhost/hook", WebhookUrlPrivate),
            ("https://api.localhost/hook", WebhookUrlPrivate),
        ],
    )
    def test_refused(self, url: str, error: type[WebhookUrlInvalid]) -> None:
        with pytest.raises(WebhookUrlInvalid) as refused:
            check_url(url, allow_private=False)
        assert type(refused.value) is error
        assert refused.value.status_code == 422

    def test_each_refusal_has_its_own_code(self) -> None:
        codes = {
            error.code
            for error in (
                WebhookUrlInvalid,
                WebhookUrlTooLong,
                WebhookUrlNotHttps,
                WebhookUrlUserinfo,
                WebhookUrlPrivate,
                WebhookUrlUnresolvable,
            )
        }
        assert len(codes) == 6

    def test_http_only_with_the_private_setting(self) -> None:
        assert check_url("http://127.0.0.1:8080/x", allow_private=True) == (
            "http://127.0.0.1:8080/x"
        )
        with pytest.raises(WebhookUrlNotHttps):
            check_url("http://127.0.0.1:8080/x", allow_private=False)

    def test_malformed_is_refused_even_with_the_private_setting(self) -> None:
        for url in ("https://u:p@127.0.0.1/", "https://127.0.0.1/#x", "ftp://127.0.0.1/"):
            with pytest.raises(WebhookUrlInvalid):
                check_url(url, allow_private=True)
        with pytest.raises(WebhookUrlTooLong):
            check_url("https://127.0.0.1/" + "a" * 2048, allow_private=True)

    def test_the_longest_url_allowed(self) -> None:
        url = "https://8.8.8.8/" + "a" * (2048 - len("https://8.8.8.8/"))
        assert check_url(url, allow_private=False) == url

    @pytest.mark.parametrize(
        ("url", "normalized"),
        [
            ("HTTPS://Hooks.Example.COM/Path?Q=1", "https://hooks.example.com/Path?Q=1"),
            ("https://hooks.example.com:8443", "https://hooks.example.com:8443"),
            ("https://b\u00fccher.example/x", "https://xn--bcher-kva.example/x"),
            ("https://[2001:4860:4860:0:0:0:0:8888]/", "https://[2001:4860:4860::8888]/"),
        ],
    )
    def test_normalized(self, url: str, normalized: str) -> None:
        assert check_url(url, allow_private=False) == normalized

    def test_target(self) -> None:
        assert url_target("https://h.example/x") == ("h.example", 443)
        assert url_target("http://h.example/x") == ("h.example", 80)
        assert url_target("https://[2001:4860::1]:8443/") == ("2001:4860::1", 8443)


class TestResolution:
    async def test_a_name_that_resolves_to_loopback_is_refused(self) -> None:
        with pytest.raises(WebhookUrlPrivate) as refused:
            await resolve_public("localhost", 443, allow_private=False)
        assert refused.value.details["reason"] == "loopback"

    async def test_allowed_with_the_private_setting(self) -> None:
        addresses = await resolve_public("localhost", 443, allow_private=True)
        assert addresses
        assert all(ipaddress.ip_address(a).is_loopback for a in addresses)

    async def test_an_ip_literal_is_not_looked_up(self) -> None:
        assert await resolve_public("8.8.8.8", 443, allow_private=False) == ["8.8.8.8"]
        assert await resolve_public("[2001:4860::1]", 443, allow_private=False) == ["2001:4860::1"]
        with pytest.raises(WebhookUrlPrivate):
            await resolve_public("[::ffff:127.0.0.1]", 443, allow_private=False)

    async def test_a_name_that_does_not_resolve(self) -> None:
        with pytest.raises(WebhookUrlUnresolvable) as refused:
            await resolve_public("no-such-host.invalid", 443, allow_private=False)
        assert refused.value.code == "webhook_url_unresolvable"

    async def test_check_public_url_resolves(self) -> None:
        # `localhost` itself is refused by name; a host-file name for loopback is refused
        # by its address (the machine's own name resolves to a loopback address here).
        with pytest.raises(WebhookUrlPrivate):
            await check_public_url("https://localhost./hook", allow_private=False)
        assert (
            await check_public_url("https://8.8.8.8/hook", allow_private=False)
            == "https://8.8.8.8/hook"
        )
        assert (
            await check_public_url("http://localhost:9/hook", allow_private=True)
            == "http://localhost:9/hook"
        )
