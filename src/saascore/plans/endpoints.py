"""(In progress.)"""

from fastapi import APIRouter


def create_plans_router() -> APIRouter:
    return APIRouter()
