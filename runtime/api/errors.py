"""One error body everywhere: {"error": {"code", "message", "status", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    code: str
    message: str
    status: int
    details: list[Any] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details or [], headers


def not_found(what: str) -> ApiError:
    """Also what another workspace's resource gets: existence is never confirmed across workspaces."""
    return ApiError(404, "not_found", f"{what} not found")


def bad_request(message: str, details: list[Any] | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, details)


def error_response(status: int, code: str, message: str, details: list[Any] | None = None, headers=None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, status=status, details=details or []))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
               413: "request_too_large", 429: "rate_limited"}


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[-1] if loc else "")


def _detail(error: dict, body: Any) -> dict:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        # FastAPI's loc is ("body", character offset): the offset is no field; say where the JSON breaks instead.
        reason = (error.get("ctx") or {}).get("error") or "not valid JSON"
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        where = ""
        if pos is not None and isinstance(body, str):
            line, column = body.count("\n", 0, pos) + 1, pos - body.rfind("\n", 0, pos)
            where = f" at line {line}, column {column} (char {pos})"
        elif pos is not None:
            where = f" at char {pos}"
        return {"field": "body", "message": f"invalid JSON: {reason}{where}"}
    return {"field": _field(loc), "message": str(error.get("msg", "")).removeprefix("Value error, ")}


# uvicorn logs every exception that reaches it ("Exception in ASGI application"), and Starlette re-raises each one
# after our handler has answered 500 and logged it with its request: the handler marks what it logged, and this
# drops uvicorn's second copy of it (anything else it reports, a WebSocket handler's crash, still gets through).
_LOGGED = "_voxline_logged"


class _DropLoggedTwice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, _LOGGED, False)


_drop_logged_twice = _DropLoggedTwice()


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        details = [_detail(e, exc.body) for e in exc.errors()]
        summary = "; ".join(f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in details)
        return error_response(400, "validation_error", summary or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.opt(exception=exc).error(f"{request.method} {request.url.path}: unhandled error")
        try:
            setattr(exc, _LOGGED, True)
        except AttributeError:  # an exception type without a __dict__: logged twice, which is no harm
            pass
        return error_response(500, "internal_error", "internal server error")

    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _drop_logged_twice not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_drop_logged_twice)


# What every /api operation documents besides its success response.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the message names the field)"},
    401: {"model": ErrorResponse, "description": "Missing, invalid or revoked API key"},
    403: {"model": ErrorResponse, "description": "The key's role may not do this"},
    404: {"model": ErrorResponse, "description": "Not found (or another workspace's)"},
    409: {"model": ErrorResponse, "description": "Conflict (e.g. Idempotency-Key reused with another body)"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Rate limit exceeded"},
}
