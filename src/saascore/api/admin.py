"""(In progress.)"""

from fastapi import APIRouter


def create_admin_router() -> APIRouter:
    return APIRouter()
