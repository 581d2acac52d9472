"""(In progress.)"""

from fastapi import APIRouter


def create_organization_router() -> APIRouter:
    return APIRouter()


def create_users_router() -> APIRouter:
    return APIRouter()
