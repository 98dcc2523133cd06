"""Domain errors: services raise these, the API layer maps them to status codes."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class PayloadTooLargeError(ServiceError):
    status_code = 413


class InvalidInputError(ServiceError):
    """Carries pydantic-style error entries so clients see one 422 shape everywhere."""

    status_code = 422


class UnavailableError(ServiceError):
    status_code = 503
