"""Request and response bodies of the admin API (pydantic at the edge only).

Definition bodies are plain JSON objects here: the one validator is the workers' own
(:func:`streams.definitions.parse_any`), whose errors come back as problem details.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from api.auth import Role
from api.errors import Problem
from streams.events import PreferenceChange

__all__ = ["MAX_DEPTH", "Cursor", "DefinitionCursor", "DefinitionOut", "KeyIn", "KeyOut",
           "Limit", "Page", "SimulationIn", "SimulationOut", "check_depth"]

#: A definition id (workflows, keywords, campaigns).
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: How deeply a definition body may nest objects and arrays (the body itself is level 1).
#: Real definitions stay under 10; a value nested a few hundred deep passed validation and
#: then failed in the store's JSON encoder (a 500).
MAX_DEPTH = 32
#: A page's size: at most 200.
Limit = Annotated[int, Query(ge=1, le=200, description="items per page (≤ 200)")]
#: The opaque cursor a page returned as ``next_cursor``.
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of a page")]
#: A definition list's cursor: the last id of the page before, so an id's pattern (a NUL
#: in it reached PostgreSQL, which refuses NUL in text: a 500).
DefinitionCursor = Annotated[str | None, Query(pattern=ID_PATTERN,
                                               description="next_cursor of a page")]
#: A definition id in a path.
Ident = Annotated[str, Field(pattern=ID_PATTERN)]


def check_depth(body: Any, limit: int = MAX_DEPTH) -> None:
    """A 422 naming the first place where ``body`` nests deeper than ``limit`` levels."""
    stack: list[tuple[Any, list[Any]]] = [(body, ["body"])]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, dict | list) and len(loc) > limit:
            msg = f"nested deeper than {limit} levels (the limit for a definition)"
            raise Problem(422, f"the body is {msg}", type_="invalid-request",
                          errors=[{"loc": loc, "msg": msg}])
        if isinstance(value, dict):
            stack.extend((v, [*loc, k]) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, [*loc, i]) for i, v in reversed(list(enumerate(value))))


class DefinitionOut(BaseModel):
    """One version of a definition, as stored and as published."""

    kind: str
    account: str
    id: str
    version: int
    created_at: datetime
    created_by: str = Field(description="the key id that wrote it")
    definition: dict[str, Any] = Field(description="the validated definition, as published")


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


class DefinitionPage(BaseModel):
    items: list[DefinitionOut]
    next_cursor: str | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    # Printable text: PostgreSQL's text refuses NUL (found by Schemathesis: a 500).
    name: str = Field("", max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")


class KeyOut(BaseModel):
    key_id: str
    account: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = Field(None, description="the key itself: shown once, at creation")


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3, max_length=254, description="E.164 phone or email")
    reason: Literal["manual", "opted_out", "bounced", "complained"] = "manual"


class CapsIn(BaseModel):
    """A contact's own frequency caps (override the account's); null: no own cap."""

    model_config = ConfigDict(extra="forbid")

    day: int | None = Field(None, ge=0, le=200)
    week: int | None = Field(None, ge=0, le=200)
    month: int | None = Field(None, ge=0, le=200)


class PreferencesIn(BaseModel):
    """Subscription changes for one contact (the ``contact.preferences_updated`` data)."""

    model_config = ConfigDict(extra="forbid")

    preferences: list[PreferenceChange] = Field(min_length=1, max_length=150)
    source: str | None = Field(None, min_length=1, max_length=128,
                               description="where the change was made; default: api")


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected"]
    id: str | None
    reason: str | None = None
    detail: str | None = None


class EventsOut(BaseModel):
    accepted: int
    rejected: int
    results: list[EventResult]


class Accepted(BaseModel):
    """A command handed to the workers (they apply it asynchronously)."""

    status: Literal["sent"] = "sent"
    detail: str


def _text(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise ValueError("an ISO 8601 time with its offset (text), e.g. 2026-03-01T00:00:00Z")
    return value


#: An instant as ISO 8601 text with its offset (a number of seconds is not taken).
Instant = Annotated[AwareDatetime, BeforeValidator(_text)]


class SimulationIn(BaseModel):
    """A journey-lab run: candidates over the recorded ``[since, until)`` of one account."""

    model_config = ConfigDict(extra="forbid")

    definitions: list[dict[str, Any]] = Field(
        default_factory=list, max_length=100,
        description="candidate workflows, keywords and account policies (docs/simulation.md), "
                    "each in place of the live version of the same id; none: the live "
                    "definitions. Each one's account is the URL's (left out: taken from it)")
    since: Instant = Field(description="start of the window, with its offset")
    until: Instant | None = Field(
        None, description="end of the window (excluded), with its offset; default: now")
    lines: int = Field(1000, ge=0, le=10_000,
                       description="at most this many lines (sends and non-sends) answered")


class ShadowOut(BaseModel):
    """The account's shadow versions against what went out live (docs/simulation.md)."""

    summary: dict[str, Any] = Field(description="the window, the shadows, the counts and "
                                                "the diff (docs/api.md)")
    lines: list[dict[str, Any]] = Field(
        description="one per shadow send (diff both or simulated), shadow non-send (kind "
                    "not_sent), and live send the shadow would not have made (diff actual)")
    truncated: bool = Field(description="more lines than `lines` were left out")


class SimulationOut(BaseModel):
    """What the candidates would have done, beside what went out."""

    summary: dict[str, Any] = Field(description="the counts and the diff (docs/api.md)")
    lines: list[dict[str, Any]] = Field(
        description="one per simulated send (diff both or simulated), non-send (kind "
                    "not_sent), and actual send the simulation did not make (diff actual)")
    truncated: bool = Field(description="more lines than `lines` were left out")
