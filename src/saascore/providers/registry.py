"""Which adapter serves a payment provider, and the provider's names.

The deployment's provider is `SAASCORE_PAYMENT_PROVIDER` (`PaymentProviderChoice`: `mock`,
`stripe`, `lemonsqueezy`); rows name it with `PaymentProvider` (`mock`, `stripe`,
`lemon_squeezy`); the webhook URL `/v1/webhooks/{provider}` takes the setting's spelling.
An organisation keeps the provider it started with, so a deployment may need an adapter for
another provider than its own: any provider whose settings are present is served.

The Stripe and Lemon Squeezy modules are imported when first needed, so a deployment on the
mock never loads their SDKs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final

from saascore.config import PROVIDER_REQUIRED, PaymentProviderChoice, Settings
from saascore.models.enums import PaymentProvider
from saascore.providers.base import PaymentProviderAdapter
from saascore.providers.errors import ProviderNotConfigured, UnknownProvider
from saascore.providers.mock import MockAdapter

__all__ = [
    "ADAPTER_MODULES",
    "ProviderRegistry",
    "choice_of",
    "provider_from_url",
    "provider_of",
    "url_name",
]

#: provider -> (module, class) of its adapter, imported when first needed.
ADAPTER_MODULES: Final = {
    PaymentProvider.STRIPE: ("saascore.providers.stripe_adapter", "StripeAdapter"),
    PaymentProvider.LEMON_SQUEEZY: ("saascore.providers.lemonsqueezy", "LemonSqueezyAdapter"),
}
_OF_CHOICE: Final = {
    PaymentProviderChoice.MOCK: PaymentProvider.MOCK,
    PaymentProviderChoice.STRIPE: PaymentProvider.STRIPE,
    PaymentProviderChoice.LEMONSQUEEZY: PaymentProvider.LEMON_SQUEEZY,
}
_CHOICE_OF: Final = {provider: choice for choice, provider in _OF_CHOICE.items()}


def provider_of(choice: PaymentProviderChoice | str) -> PaymentProvider:
    """The `PaymentProvider` of a setting's value (`lemonsqueezy` is `lemon_squeezy`)."""
    return _OF_CHOICE[PaymentProviderChoice(choice)]


def choice_of(provider: PaymentProvider) -> PaymentProviderChoice:
    """The setting's value of a provider (`UnknownProvider` for one that is not sold
    through: manual, tharwatt)."""
    try:
        return _CHOICE_OF[PaymentProvider(provider)]
    except (KeyError, ValueError):
        raise UnknownProvider(
            f"{provider} is not a payment provider saascore sells through",
            provider=str(provider),
        ) from None


def provider_from_url(name: str) -> PaymentProvider:
    """The provider a webhook URL names: `stripe`, `lemonsqueezy` or `mock`."""
    try:
        return provider_of(name)
    except ValueError:
        raise UnknownProvider(
            f"{name[:40]!r} is not a payment provider: stripe, lemonsqueezy or mock",
            provider=name[:40],
        ) from None


def url_name(provider: PaymentProvider) -> str:
    """The provider's name in `/v1/webhooks/{provider}`."""
    return choice_of(provider).value


class ProviderRegistry:
    """The adapters of one deployment, made once each; `aclose()` closes them all."""

    def __init__(
        self, settings: Settings, *, signing_key: Callable[[], str] | str | None = None
    ) -> None:
        self.settings = settings
        self.mock = MockAdapter(settings, signing_key=signing_key)
        self._adapters: dict[PaymentProvider, PaymentProviderAdapter] = {
            PaymentProvider.MOCK: self.mock
        }

    @property
    def default(self) -> PaymentProvider:
        """The deployment's provider (`SAASCORE_PAYMENT_PROVIDER`)."""
        return provider_of(self.settings.payment_provider)

    def configured(self, provider: PaymentProvider) -> bool:
        """Whether the provider's settings are all present."""
        choice = choice_of(provider)
        return all(getattr(self.settings, name) is not None for name in PROVIDER_REQUIRED[choice])

    def get(self, provider: PaymentProvider) -> PaymentProviderAdapter:
        """The provider's adapter; `provider_not_configured` without its settings."""
        provider = PaymentProvider(provider)
        adapter = self._adapters.get(provider)
        if adapter is not None:
            return adapter
        if provider not in ADAPTER_MODULES:
            choice_of(provider)  # raises for providers not sold through
        if not self.configured(provider):
            missing = [
                f"SAASCORE_{name.upper()}"
                for name in PROVIDER_REQUIRED[choice_of(provider)]
                if getattr(self.settings, name) is None
            ]
            raise ProviderNotConfigured(
                f"{url_name(provider)} is not configured here: set {', '.join(missing)}",
                provider=url_name(provider),
            )
        module_name, class_name = ADAPTER_MODULES[provider]
        module = importlib.import_module(module_name)
        made: PaymentProviderAdapter = getattr(module, class_name)(self.settings)
        self._adapters[provider] = made
        return made

    async def aclose(self) -> None:
        """Close every adapter made."""
        adapters, self._adapters = list(self._adapters.values()), {PaymentProvider.MOCK: self.mock}
        for adapter in adapters:
            await adapter.aclose()
