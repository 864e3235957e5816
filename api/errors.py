"""Every error as ``application/problem+json`` (RFC 9457).

``{"type", "title", "status", "detail"}``, plus ``errors: [{"loc", "msg"}]`` for each
validation failure — of the request (FastAPI's) and of a definition (the workers' own
validator, :class:`streams.definitions.DefinitionError`, whose ``"path: message"`` lines
become ``loc`` and ``msg``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from streams.definitions import DefinitionError

__all__ = ["PROBLEM", "Problem", "install", "problem_response"]

PROBLEM = "application/problem+json"
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Content too large",
           415: "Unsupported media type", 501: "Not implemented", 422: "Unprocessable content",
           429: "Too many requests", 500: "Internal server error", 503: "Unavailable"}


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, type_: str | None = None,
                 errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_ or _TITLES.get(status, "error").lower().replace(" ", "-")
        self.errors = errors
        self.headers = headers


def problem_response(status: int, detail: str, *, type_: str | None = None,
                     errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://dripstream.dev/problems/{type_ or _slug(status)}",
        "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _slug(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")


def definition_errors(exc: DefinitionError) -> list[dict[str, Any]]:
    """``"steps.a.next: unknown step 'b'"`` → ``{"loc": ["body", "steps", "a", "next"], …}``."""
    out = []
    for line in exc.errors:
        path, sep, msg = line.partition(": ")
        if not sep:
            path, msg = "(root)", line
        loc: list[Any] = ["body"] + ([] if path == "(root)" else path.split("."))
        out.append({"loc": loc, "msg": msg})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, type_=exc.type, errors=exc.errors,
                                headers=exc.headers)

    @app.exception_handler(DefinitionError)
    async def _definition(request: Request, exc: DefinitionError) -> JSONResponse:
        return problem_response(422, "the definition is invalid", type_="invalid-definition",
                                errors=definition_errors(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        return problem_response(422, "the request is invalid", type_="invalid-request",
                                errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail),
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(500, "internal error")
