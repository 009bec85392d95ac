"""Errors that carry the seed's shape: {"error": {"code", "type", "message"}}.

Deciders raise these (they are plain values, no I/O), the api renders them; one type from every
layer keeps the shape the same everywhere."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, frozen=True):
    code: int
    type: str
    message: str


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_type(code: int) -> str:
    return ERROR_TYPES.get(code, "error")


class GpuWorkerError(Exception):
    code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, type=error_type(self.code), message=self.message)


class BadRequest(GpuWorkerError):
    code = 400


class Unauthorized(GpuWorkerError):
    code = 401


class PaymentRequired(GpuWorkerError):
    """The balance, the monthly budget or the hourly spend limit does not allow it."""

    code = 402


class Forbidden(GpuWorkerError):
    code = 403


class NotFound(GpuWorkerError):
    code = 404


class Conflict(GpuWorkerError):
    code = 409


class PayloadTooLarge(GpuWorkerError):
    code = 413


class TooManyRequests(GpuWorkerError):
    code = 429

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(GpuWorkerError):
    code = 503


_BY_CODE: dict[int, type[GpuWorkerError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooManyRequests,
        ServiceUnavailable,
    )
}


def from_body(body: ErrorBody) -> GpuWorkerError:
    cls = _BY_CODE.get(body.code, GpuWorkerError)
    err = cls(body.message)
    err.code = body.code
    return err
