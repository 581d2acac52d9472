"""Organisations (tenants) and their users."""

from saascore.tenancy.service import OrganizationExists, OrganizationNotFound, OrganizationService

__all__ = ["OrganizationExists", "OrganizationNotFound", "OrganizationService"]
