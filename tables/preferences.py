"""Preference links (docs/preferences.md#the-preference-page): a contact opens its
preference page from a link in a message, signed so that it names one contact of one
account, cannot be changed into another's, and expires.

A token is ``<payload>.<signature>``: the payload is the JSON list [account, contact id,
expiry in whole seconds] in URL-safe base64; the signature is the first 128 bits of
HMAC-SHA256 over the payload with the shared secret (``DRIPSTREAM_PREFERENCES_SECRET``:
the workers sign, the API verifies). Pure: ``now`` and the secret are given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import orjson

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["LinkError", "Links", "sign", "verify"]

class LinkError(ValueError):
    """A link that does not open a page: ``invalid`` (malformed or tampered with) or
    ``expired``."""

    def __init__(self, reason: Literal["invalid", "expired"]) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])


def sign(secret: bytes, account: str, contact_id: str, expires: datetime) -> str:
    payload = _b64(orjson.dumps([account, contact_id, int(expires.timestamp())]))
    return f"{payload}.{_signature(secret, payload)}"


def verify(secret: bytes, token: str, now: datetime) -> tuple[str, str, datetime]:
    """``(account, contact id, expiry)`` of a token this secret signed and that has not
    expired at ``now``; else :class:`LinkError`."""
    payload, _, signature = token.partition(".")
    if not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        raise LinkError("invalid")
    try:
        account, contact_id, expiry = orjson.loads(_unb64(payload))
        if not (isinstance(account, str) and isinstance(contact_id, str)
                and isinstance(expiry, int)):
            raise ValueError(payload)
        expires = datetime.fromtimestamp(expiry, UTC)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise LinkError("invalid") from None
    if now >= expires:
        raise LinkError("expired")
    return account, contact_id, expires


@dataclass(frozen=True, slots=True)
class Links:
    """What ``{{preferences_url}}`` renders to: ``<base_url>/preferences/<token>``, valid
    ``days`` from the send's creation (so a send redone after a crash, or deferred,
    renders the same link)."""

    base_url: str
    secret: bytes
    days: int = 30

    @classmethod
    def of(cls, settings: Settings) -> Links | None:
        """The settings' links: None unless both the URL and the secret are set."""
        if settings.preferences_url is None or settings.preferences_secret is None:
            return None
        return cls(settings.preferences_url,
                   settings.preferences_secret.get_secret_value().encode(),
                   settings.preferences_link_days)

    def preferences_url(self, account: str, contact_id: str, issued: datetime) -> str:
        token = sign(self.secret, account, contact_id, issued + timedelta(days=self.days))
        return f"{self.base_url.rstrip('/')}/preferences/{token}"
