"""Failures answered in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with a status code."""

from __future__ import annotations

from internvlu.errors import InternVLUError, UsageError

# status -> OpenAI's error type for it
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled", 500: "server_error",
               503: "server_error"}


class ApiError(InternVLUError):
    """One failed request: the status, a one-line message naming the problem and the fix, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param, "invalid_value")


def from_failure(exc: BaseException) -> ApiError:
    """What a job's failure tells its client: the runtime's own one-line messages, a generic line for a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc), code="invalid_value")
    if isinstance(exc, InternVLUError):
        return ApiError(500, str(exc), code="runtime_error")
    return ApiError(500, f"internal error ({type(exc).__name__}); the server log has the traceback", code="internal_error")
