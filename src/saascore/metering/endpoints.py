"""(In progress.)"""

from fastapi import APIRouter


def create_usage_router() -> APIRouter:
    return APIRouter()
