"""Contact ids in paths: one segment, whatever characters the id holds.

The contract allows any 1 to 256 characters in a contact id (``subject``), ``/`` included. A
client sends such an id percent-encoded (``a%2Fb``), but the server decodes the path
before routing, so ``…/contacts/a/b`` matched no route and the contact could be listed
but not opened. :class:`ContactSegment` rebuilds the routing path from the raw one with
the contact segment left encoded, and the routes declare that segment as
``{contact_id:contact}`` (:class:`ContactConvertor`), which decodes it: the id reaches the
route exactly as published, and the rest of the path is decoded as before.

Only the segment right after ``/v1/accounts/<account>/contacts/`` and
``/dashboard/<account>/contacts/`` is treated so; execution ids keep their ``:path``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CONTACT_PATH", "ContactConvertor", "ContactSegment", "contact_segment"]

#: A contact's path under an account (importing it registers the convertor).
CONTACT_PATH = "/contacts/{contact_id:contact}"
_SEGMENT = re.compile(r"/(?:v1/accounts|dashboard)/[^/]+/contacts/([^/]+)")


def contact_segment(contact_id: str) -> str:
    """The id as one path segment (every reserved character escaped)."""
    return quote(contact_id, safe="")


class ContactConvertor(Convertor[str]):
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return contact_segment(value)


register_url_convertor("contact", ContactConvertor())


class ContactSegment:
    """Keeps a contact path's contact segment percent-encoded for routing (the scope's
    ``path`` is changed in place, so outer middleware sees the route it matched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            try:
                text = raw.decode("ascii").partition("?")[0]
            except UnicodeDecodeError:  # a server that decoded no further: leave it be
                text = ""
            if (found := _SEGMENT.search(text)) is not None:
                start, end = found.span(1)
                scope["path"] = (unquote(text[:start]) + contact_segment(unquote(found[1]))
                                 + unquote(text[end:]))
        await self.app(scope, receive, send)
